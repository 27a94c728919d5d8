"""job_counts: each user's active jobs counted by the database itself, in the transaction that changes them

Revision ID: 0009
Revises: 0008

A row per (user, state) where state is `queued` (waiting for the dispatcher), `dispatched`
(handed to a backend, not started) or `running`. Triggers on `jobs` keep the counts in the same
transaction as the insert, transition or delete they count, so quotas, /v1/me, the scheduler and
the metrics read a handful of rows instead of counting the queue (which grows to 100,000 jobs).
Triggers rather than application writes: every path that changes a job (transitions, cancels,
retention's deletes, a user's deletion) is counted, and the cost stays inside the database.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _state(row: str) -> str:
    return (
        f"CASE WHEN {row}.status = 'queued' AND {row}.backend IS NULL THEN 'queued' "
        f"WHEN {row}.status = 'queued' THEN 'dispatched' "
        f"WHEN {row}.status = 'running' THEN 'running' END"
    )


_SQLITE = [
    f"""
    CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs
    WHEN ({_state("NEW")}) IS NOT NULL
    BEGIN
        INSERT INTO job_counts (user_id, state, n) VALUES (NEW.user_id, {_state("NEW")}, 1)
        ON CONFLICT (user_id, state) DO UPDATE SET n = n + 1;
    END
    """,
    f"""
    CREATE TRIGGER jobs_count_update AFTER UPDATE OF status, backend ON jobs
    WHEN ({_state("OLD")}) IS NOT ({_state("NEW")})
    BEGIN
        UPDATE job_counts SET n = n - 1 WHERE user_id = OLD.user_id AND state = {_state("OLD")};
        INSERT INTO job_counts (user_id, state, n)
        SELECT NEW.user_id, {_state("NEW")}, 1 WHERE ({_state("NEW")}) IS NOT NULL
        ON CONFLICT (user_id, state) DO UPDATE SET n = n + 1;
    END
    """,
    f"""
    CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs
    WHEN ({_state("OLD")}) IS NOT NULL
    BEGIN
        UPDATE job_counts SET n = n - 1 WHERE user_id = OLD.user_id AND state = {_state("OLD")};
    END
    """,
]

_POSTGRES = [
    f"""
    CREATE FUNCTION jobs_count() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        old_state text;
        new_state text;
    BEGIN
        IF TG_OP <> 'INSERT' THEN
            old_state := {_state("OLD")};
        END IF;
        IF TG_OP <> 'DELETE' THEN
            new_state := {_state("NEW")};
        END IF;
        IF old_state IS NOT DISTINCT FROM new_state THEN
            RETURN NULL;
        END IF;
        IF old_state IS NOT NULL THEN
            UPDATE job_counts SET n = n - 1 WHERE user_id = OLD.user_id AND state = old_state;
        END IF;
        IF new_state IS NOT NULL THEN
            INSERT INTO job_counts (user_id, state, n) VALUES (NEW.user_id, new_state, 1)
            ON CONFLICT (user_id, state) DO UPDATE SET n = job_counts.n + 1;
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER jobs_count AFTER INSERT OR UPDATE OF status, backend OR DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_count()
    """,
]


def upgrade() -> None:
    op.create_table(
        "job_counts",
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("user_id", "state"),
    )
    # The jobs that exist now, counted once.
    op.execute(
        f"INSERT INTO job_counts (user_id, state, n) SELECT user_id, state, count(*) FROM "
        f"(SELECT user_id, {_state('jobs')} AS state FROM jobs) AS active WHERE state IS NOT NULL "
        f"GROUP BY user_id, state"
    )
    for statement in _POSTGRES if op.get_bind().dialect.name == "postgresql" else _SQLITE:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER jobs_count ON jobs")
        op.execute("DROP FUNCTION jobs_count()")
    else:
        for name in ("jobs_count_insert", "jobs_count_update", "jobs_count_delete"):
            op.execute(f"DROP TRIGGER {name}")
    op.drop_table("job_counts")
