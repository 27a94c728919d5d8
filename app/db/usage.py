"""What a user is using now: counts of its jobs for limits and for /v1/me."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Job, JobCount, JobCreatedHour


async def _active(session: AsyncSession, user_id: str) -> dict[str, int]:
    """The user's counters (app/db/models.py JobCount): a few rows, whatever the queue holds."""
    rows = await session.execute(_COUNTS, {"user_id": user_id})
    return {state: int(n) for state, n in rows.all()}


_COUNTS = select(JobCount.state, JobCount.n).where(JobCount.user_id == bindparam("user_id"))


async def quota_counts(session: AsyncSession, user_id: str, since: datetime) -> tuple[int, int]:
    """(queued jobs, jobs created after `since`) of the user, in one round trip (every submit asks).
    Queued counts jobs handed to a backend that have not started, as the user sees them (status
    `queued`); the jobs created are counted as `created_since` does."""
    row = (await session.execute(_QUOTAS, {"user_id": user_id, **_window(since)})).one()
    return int(row[0] or 0), int(row[1] or 0) + int(row[2] or 0)


async def status_counts(session: AsyncSession, user_id: str) -> dict[str, int]:
    """The user's queued and running jobs."""
    counts = await _active(session, user_id)
    return {
        "queued": counts.get("queued", 0) + counts.get("dispatched", 0),
        "running": counts.get("running", 0),
    }


async def created_since(session: AsyncSession, user_id: str, since: datetime) -> int:
    """The user's jobs created after `since`: the whole hours after it from the per-hour counters
    (JobCreatedHour), and only the hour `since` falls in counted row by row, so the cost does not
    grow with how many jobs the user made that day."""
    row = (await session.execute(_CREATED, {"user_id": user_id, **_window(since)})).one()
    return int(row[0] or 0) + int(row[1] or 0)


def _window(since: datetime) -> dict[str, object]:
    """The parameters of _CREATED: the first whole hour after `since`, and where it starts."""
    first_full = int(since.timestamp()) // 3600 + 1
    return {"since": since, "boundary": datetime.fromtimestamp(first_full * 3600, UTC), "hour": first_full}


_CREATED = select(
    select(func.sum(JobCreatedHour.n))
    .where(JobCreatedHour.user_id == bindparam("user_id"), JobCreatedHour.hour >= bindparam("hour"))
    .scalar_subquery(),
    select(func.count())
    .where(
        Job.user_id == bindparam("user_id"),
        Job.created_at > bindparam("since"),
        Job.created_at < bindparam("boundary"),
    )
    .scalar_subquery(),
)


_QUOTAS = select(
    select(func.sum(JobCount.n))
    # Not IN (...): an expanding parameter is rendered again at every execution.
    .where(
        JobCount.user_id == bindparam("user_id"),
        (JobCount.state == "queued") | (JobCount.state == "dispatched"),
    )
    .scalar_subquery(),
    *_CREATED.selected_columns,
)


async def forget_hours_before(session: AsyncSession, before: datetime) -> None:
    """Drop per-hour counters no quota window reaches any more."""
    await session.execute(delete(JobCreatedHour).where(JobCreatedHour.hour < int(before.timestamp()) // 3600))


async def nth_created_since(session: AsyncSession, user_id: str, since: datetime, n: int) -> datetime | None:
    """The creation time of the user's n-th oldest job (from 0) created after `since`."""
    stmt = (
        select(Job.created_at)
        .where(Job.user_id == user_id, Job.created_at > since)
        .order_by(Job.created_at, Job.id)
        .offset(n)
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def starts_since(session: AsyncSession, user_id: str, since: datetime) -> tuple[int, datetime | None]:
    """How many of the user's jobs started after `since`, and the earliest of those starts."""
    stmt = select(func.count(), func.min(Job.started_at)).where(
        Job.user_id == user_id, Job.started_at > since
    )
    count, first = (await session.execute(stmt)).one()
    return int(count), first


async def recent_run_seconds(session: AsyncSession, user_id: str, limit: int = 20) -> list[float]:
    """How long the user's last finished jobs ran."""
    stmt = (
        select(Job.started_at, Job.finished_at)
        .where(Job.user_id == user_id, Job.started_at.is_not(None), Job.finished_at.is_not(None))
        .order_by(Job.finished_at.desc())
        .limit(limit)
    )
    rows = (await session.execute(stmt)).all()
    return [(finished - started).total_seconds() for started, finished in rows if started and finished]


async def nonzero_counts(session: AsyncSession) -> list[tuple[str, str, int]]:
    """Every (state, user id, count) that is not zero: the deployment's queue and running gauges."""
    rows = await session.execute(select(JobCount.state, JobCount.user_id, JobCount.n).where(JobCount.n > 0))
    return [(state, user_id, n) for state, user_id, n in rows.all()]
