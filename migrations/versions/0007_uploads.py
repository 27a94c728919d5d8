"""uploads (input files), jobs.inputs (what is staged at dispatch), jobs.keep_temp, jobs.outputs_expired_at (retention), 64-bit output sizes

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=100), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("storage_key", sa.String(length=500), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_uploads_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_uploads")),
    )
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.create_index("ix_uploads_user_created", ["user_id", "created_at"], unique=False)
        batch_op.create_index("ix_uploads_created_at", ["created_at"], unique=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("inputs", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("keep_temp", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("outputs_expired_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.alter_column("size", existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.alter_column("size", existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("outputs_expired_at")
        batch_op.drop_column("keep_temp")
        batch_op.drop_column("inputs")
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.drop_index("ix_uploads_created_at")
        batch_op.drop_index("ix_uploads_user_created")
    op.drop_table("uploads")
