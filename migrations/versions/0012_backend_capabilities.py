"""What each backend can run, as its owner last read it: the replicas that do not follow a backend
still know whether a job can run anywhere (a job no backend can run fails instead of waiting).

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("backends") as batch:
        batch.add_column(sa.Column("capabilities", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("capabilities_digest", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("capabilities_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("backends") as batch:
        batch.drop_column("capabilities_at")
        batch.drop_column("capabilities_digest")
        batch.drop_column("capabilities")
