"""The queue as the dispatcher reads it: statements whose cost does not grow with its length.

At 100,000 queued jobs a count or a GROUP BY over the queue costs tens of milliseconds per round
and per submit; these read only what they return, through the indexes of migration 0008:
- the users with waiting work, and jobs in flight per user: the counters the database keeps
  (JobCount, migration 0009), a few rows per user;
- a user's next jobs in dispatch order (priority, then age), read from the index in that order.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import BindParameter, ColumnElement, bindparam, func, inspect, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import driver
from app.db.models import Job, JobCount

# A round's reads, run on the driver (app/db/driver.py) like the statements of a job's transitions.
_ACTIVE_COUNTS = driver.Statement(select(JobCount.user_id, JobCount.state, JobCount.n).where(JobCount.n > 0))


async def active_counts(session: AsyncSession) -> tuple[list[str], dict[str, int]]:
    """In one read of the counters: the users with queued jobs not yet handed to a backend, and
    per user the jobs handed to a backend and not ended (at most the pool's slots and reserves)."""
    waiting: list[str] = []
    in_flight: dict[str, int] = {}
    for user_id, state, n in await driver.fetch(session, _ACTIVE_COUNTS, {}):
        if state == "queued":
            waiting.append(user_id)
        else:
            in_flight[user_id] = in_flight.get(user_id, 0) + int(n)
    return waiting, in_flight


# Every column, the graph and the inputs too: dispatching needs them.
_NEXT_KEYS = [attr.key for attr in inspect(Job).column_attrs]
_NEXT = driver.Statement(
    select(*(inspect(Job).column_attrs[key].columns[0] for key in _NEXT_KEYS))
    .where(
        Job.user_id == bindparam("user_id"),
        Job.status == "queued",
        Job.backend.is_(None),
        Job.cancel_requested.is_(False),
    )
    .order_by(Job.priority.desc(), Job.created_at, Job.id)
    .limit(bindparam("limit"))
)


async def next_jobs(session: AsyncSession, user_id: str, limit: int) -> list[Job]:
    """A user's next undispatched jobs in dispatch order, with what dispatching needs of them."""
    rows = await driver.fetch(session, _NEXT, {"user_id": user_id, "limit": limit})
    return [cast(Job, driver.detached(Job, _NEXT_KEYS, row)) for row in rows]


#: queue_position counts at most this many jobs ahead: past it, the exact number says nothing a
#: client can use, and counting it would grow with the queue.
POSITION_CAP = 1000

_cap: ColumnElement[int] = literal_column(str(POSITION_CAP))
_AHEAD_ON_BACKEND = driver.Statement(
    select(func.count()).select_from(
        select(Job.id)
        .where(
            Job.status == "queued",
            Job.backend == bindparam("backend"),
            Job.dispatched_at < bindparam("dispatched_at"),
        )
        .limit(_cap)
        .subquery()
    )
)
_ON_BACKENDS = select(func.count()).select_from(
    select(Job.id).where(Job.status == "queued", Job.backend.is_not(None)).limit(_cap).subquery()
)
_priority: BindParameter[int] = bindparam("priority")
_created: BindParameter[datetime] = bindparam("created_at")
_id: BindParameter[str] = bindparam("job_id")
# Three ranges of ix_jobs_queue_order: higher priority; same priority, older; same age, lower id.
_AHEAD_IN_QUEUE = select(func.count()).select_from(
    select(Job.id)
    .where(Job.status == "queued", Job.backend.is_(None), Job.priority > _priority)
    .union_all(
        select(Job.id).where(
            Job.status == "queued",
            Job.backend.is_(None),
            Job.priority == _priority,
            Job.created_at < _created,
        ),
        select(Job.id).where(
            Job.status == "queued",
            Job.backend.is_(None),
            Job.priority == _priority,
            Job.created_at == _created,
            Job.id < _id,
        ),
    )
    .limit(_cap)
    .subquery()
)

# Both counts in one round trip. Every submit asks: run on the driver (app/db/driver.py).
_AHEAD = driver.Statement(select(_ON_BACKENDS.scalar_subquery(), _AHEAD_IN_QUEUE.scalar_subquery()))


async def position(session: AsyncSession, job: Job) -> int | None:
    """How many queued jobs will start before this one, up to POSITION_CAP.

    Jobs already handed to a backend come first (they wait in ComfyUI's own queue), then the
    gateway's queue in dispatch order (priority, then age)."""
    if job.status != "queued":
        return None
    if job.backend is not None:
        on_backend = {"backend": job.backend, "dispatched_at": job.dispatched_at}
        return int((await driver.fetch(session, _AHEAD_ON_BACKEND, on_backend))[0][0])
    params: dict[str, object] = {"priority": job.priority, "created_at": job.created_at, "job_id": job.id}
    on_backends, ahead = (await driver.fetch(session, _AHEAD, params))[0]
    return min(POSITION_CAP, int(on_backends) + int(ahead))
