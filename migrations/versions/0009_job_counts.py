"""job_counts and job_created_hours: each user's active jobs, and the jobs it created per hour, counted by the database itself in the transaction that changes them

Revision ID: 0009
Revises: 0008

A row per (user, state) where state is `queued` (waiting for the dispatcher), `dispatched`
(handed to a backend, not started) or `running`. Triggers on `jobs` keep the counts in the same
transaction as the insert, transition or delete they count, so quotas, /v1/me, the scheduler and
the metrics read a handful of rows instead of counting the queue (which grows to 100,000 jobs).
Triggers rather than application writes: every path that changes a job (transitions, cancels,
retention's deletes, a user's deletion) is counted, and the cost stays inside the database.

job_created_hours holds a row per (user, hour since the epoch) with the jobs the user created in
that hour: the jobs_per_day quota sums 24 of them and counts rows only in the hour its window
starts in, instead of counting a busy user's whole day at every submit.

On PostgreSQL both tables are a few rows updated at every transition: a low fill factor keeps those
updates HOT (in the same page, pruned as they go), and autovacuum visits them often.
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


_HOUR_SQLITE = "CAST(strftime('%s', NEW.created_at) AS INTEGER) / 3600"
_HOUR_PG = "floor(extract(epoch FROM NEW.created_at) / 3600)::bigint"

_SQLITE = [
    f"""
    CREATE TRIGGER jobs_created_hour AFTER INSERT ON jobs
    BEGIN
        INSERT INTO job_created_hours (user_id, hour, n) VALUES (NEW.user_id, {_HOUR_SQLITE}, 1)
        ON CONFLICT (user_id, hour) DO UPDATE SET n = n + 1;
    END
    """,
    # The counters follow the rows exactly: a deleted job leaves its hour, a moved one changes hour.
    f"""
    CREATE TRIGGER jobs_created_hour_moved AFTER UPDATE OF created_at, user_id ON jobs
    BEGIN
        UPDATE job_created_hours SET n = n - 1 WHERE user_id = OLD.user_id AND hour = {_HOUR_SQLITE.replace("NEW.", "OLD.")};
        INSERT INTO job_created_hours (user_id, hour, n) VALUES (NEW.user_id, {_HOUR_SQLITE}, 1)
        ON CONFLICT (user_id, hour) DO UPDATE SET n = n + 1;
    END
    """,
    f"""
    CREATE TRIGGER jobs_created_hour_deleted AFTER DELETE ON jobs
    BEGIN
        UPDATE job_created_hours SET n = n - 1 WHERE user_id = OLD.user_id AND hour = {_HOUR_SQLITE.replace("NEW.", "OLD.")};
    END
    """,
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
    f"""
    CREATE FUNCTION jobs_created_hour() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        -- The counters follow the rows exactly: a deleted job leaves its hour, a moved one changes hour.
        IF TG_OP <> 'INSERT' THEN
            UPDATE job_created_hours SET n = n - 1
            WHERE user_id = OLD.user_id AND hour = {_HOUR_PG.replace("NEW.", "OLD.")};
        END IF;
        IF TG_OP <> 'DELETE' THEN
            INSERT INTO job_created_hours (user_id, hour, n) VALUES (NEW.user_id, {_HOUR_PG}, 1)
            ON CONFLICT (user_id, hour) DO UPDATE SET n = job_created_hours.n + 1;
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER jobs_created_hour AFTER INSERT OR UPDATE OF created_at, user_id OR DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_created_hour()
    """,
    "ALTER TABLE job_counts SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000)",
    "ALTER TABLE job_created_hours SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000)",
]


def upgrade() -> None:
    op.create_table(
        "job_counts",
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("user_id", "state"),
    )
    op.create_table(
        "job_created_hours",
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("hour", sa.BigInteger(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("user_id", "hour"),
    )
    # The jobs that exist now, counted once (the last two days, all a quota window can need).
    postgres = op.get_bind().dialect.name == "postgresql"
    hour = _HOUR_PG if postgres else _HOUR_SQLITE
    recent = "created_at > now() - interval '2 days'" if postgres else "created_at > datetime('now', '-2 days')"
    op.execute(
        f"INSERT INTO job_created_hours (user_id, hour, n) SELECT user_id, h, count(*) FROM "
        f"(SELECT user_id, {hour.replace('NEW.', '')} AS h FROM jobs WHERE {recent}) AS recent GROUP BY user_id, h"
    )
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
        op.execute("DROP TRIGGER jobs_created_hour ON jobs")
        op.execute("DROP FUNCTION jobs_created_hour()")
    else:
        for name in (
            "jobs_count_insert", "jobs_count_update", "jobs_count_delete",
            "jobs_created_hour", "jobs_created_hour_moved", "jobs_created_hour_deleted",
        ):
            op.execute(f"DROP TRIGGER {name}")
    op.drop_table("job_created_hours")
    op.drop_table("job_counts")
