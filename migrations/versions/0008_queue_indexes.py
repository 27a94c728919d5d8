"""indexes that keep the dispatcher's pick and queue positions independent of the queue's length

Revision ID: 0008
Revises: 0007

- ix_jobs_user_pick (user_id, status, priority DESC, created_at, id) replaces ix_jobs_user_status:
  a user's next jobs are read in dispatch order from the index, however many it has queued
  (the quota counts use its prefix);
- ix_jobs_queue_order (status, backend, priority DESC, created_at, id): the jobs ahead of one
  are a contiguous range, counted up to a cap.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_jobs_user_status", table_name="jobs")
    op.create_index(
        "ix_jobs_user_pick", "jobs", ["user_id", "status", sa.text("priority DESC"), "created_at", "id"]
    )
    op.create_index(
        "ix_jobs_queue_order", "jobs", ["status", "backend", sa.text("priority DESC"), "created_at", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_queue_order", table_name="jobs")
    op.drop_index("ix_jobs_user_pick", table_name="jobs")
    op.create_index("ix_jobs_user_status", "jobs", ["user_id", "status"])
