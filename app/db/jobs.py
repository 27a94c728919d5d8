"""Job rows: every state change is a conditional UPDATE, so that a restart, a late WebSocket message
or a second dispatcher can never move a job backwards or send it twice.

Each function returns whether it changed the row; callers commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, and_, bindparam, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import undefer

from app.db import job_events, queue, webhooks
from app.db.models import Job, Output
from app.db.types import utcnow

ACTIVE = ("queued", "running")
TERMINAL = ("succeeded", "failed", "canceled")


async def get_job(
    session: AsyncSession,
    job_id: str,
    *,
    user_id: str | None = None,
    fresh: bool = False,
    with_workflow: bool = False,
) -> Job | None:
    """`with_workflow`: load the (deferred) graph too."""
    stmt = select(Job).where(Job.id == job_id)
    if with_workflow:
        stmt = stmt.options(undefer(Job.workflow))
    if fresh:
        stmt = stmt.execution_options(populate_existing=True)
    if user_id is not None:
        stmt = stmt.where(Job.user_id == user_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def get_jobs(session: AsyncSession, job_ids: Sequence[str]) -> list[Job]:
    if not job_ids:
        return []
    return list((await session.execute(select(Job).where(Job.id.in_(job_ids)))).scalars())


async def get_job_by_prompt(session: AsyncSession, prompt_id: str) -> Job | None:
    return (await session.execute(select(Job).where(Job.prompt_id == prompt_id))).scalar_one_or_none()


async def outputs_for(session: AsyncSession, job_ids: Sequence[str]) -> dict[str, list[Output]]:
    result: dict[str, list[Output]] = {job_id: [] for job_id in job_ids}
    if not job_ids:
        return result
    rows = await session.execute(
        select(Output).where(Output.job_id.in_(job_ids)).order_by(Output.created_at, Output.id)
    )
    for out in rows.scalars():
        result[out.job_id].append(out)
    return result


async def list_jobs(
    session: AsyncSession,
    *,
    user_id: str | None,
    statuses: Sequence[str] | None,
    limit: int,
    after: tuple[datetime, str] | None,
) -> tuple[list[Job], bool]:
    """Newest first; returns the page and whether there is more."""
    stmt = select(Job)
    if user_id is not None:
        stmt = stmt.where(Job.user_id == user_id)
    if statuses:
        stmt = stmt.where(Job.status.in_(statuses))
    if after is not None:
        created, job_id = after
        stmt = stmt.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id)))
    stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    jobs = list((await session.execute(stmt)).scalars())
    return jobs[:limit], len(jobs) > limit


# The jobs ahead of a queued one, counted without scanning the queue (app/db/queue.py).
queue_position = queue.position


async def in_flight(session: AsyncSession, backend: str | None = None) -> list[Job]:
    """Jobs handed to a backend and not finished: what the tracker follows."""
    stmt = select(Job).where(Job.status.in_(ACTIVE), Job.backend.is_not(None))
    if backend is not None:
        stmt = stmt.where(Job.backend == backend)
    return list((await session.execute(stmt)).scalars())


# Transitions are conditional UPDATEs built once, with bound parameters (named `p_...`: a
# parameter named like a column would be taken as a value to SET): building the statement and its
# cache key for every call cost more CPU than running it.
_JOB_ID = bindparam("p_job_id", type_=Job.__table__.c.id.type)
_NOW = bindparam("p_now", type_=Job.__table__.c.updated_at.type)
_PROMPT_ID = bindparam("p_prompt_id", type_=Job.__table__.c.prompt_id.type)
_PROGRESS = bindparam("p_progress", type_=Job.__table__.c.progress.type)
_N_EVENTS = bindparam("p_n_events", type_=Integer())
_statements: dict[tuple[Any, ...], Any] = {}


def _statement(key: tuple[Any, ...], where: Sequence[Any], **values: Any) -> Any:
    """The UPDATE of one job (`p_job_id`) under `where`, RETURNING the changed row; built on first
    use. A status change also takes the ids of its events (`p_n_events`: its outputs' and its own)
    in the same UPDATE: the row lock orders a job's events on every replica, with no second
    statement."""
    stmt = _statements.get(key)
    if stmt is None:
        values.setdefault("updated_at", _NOW)
        if "status" in values:
            values["event_seq"] = Job.event_seq + _N_EVENTS
        stmt = _statements[key] = (
            update(Job)
            .where(Job.id == _JOB_ID, *where)
            .values(**values)
            .returning(Job)
            # The returned row is the new state: it overwrites an object the session already
            # holds (populate_existing), so evaluating the WHERE clause in Python against objects
            # in the session (synchronize_session) would only cost time.
            .execution_options(synchronize_session=False, populate_existing=True)
        )
    return stmt


async def _update(
    session: AsyncSession, stmt: Any, params: dict[str, Any], *, outputs: Sequence[Output] = ()
) -> Job | None:
    """Run one of the statements above; the changed row comes back, or None if nothing matched."""
    transition = "p_n_events" in params
    if transition:
        params["p_n_events"] = len(outputs) + 1
    params.setdefault("p_now", utcnow())
    job = (await session.execute(stmt, params)).scalars().first()
    if job is not None and transition:
        # Both in this transition's transaction: the event log (Last-Event-ID, live subscribers)
        # and the webhook outbox hear of every status change exactly when it commits.
        await job_events.record_transition(session, job, outputs)
        await webhooks.on_transition(session, job)
    return job


async def claim(session: AsyncSession, job_id: str, *, backend: str, prompt_id: str) -> Job | None:
    """Hand a queued job to a backend. Only one dispatcher can win this."""
    stmt = _statement(
        ("claim",),
        [Job.status == "queued", Job.backend.is_(None), Job.cancel_requested.is_(False)],
        backend=bindparam("p_backend", type_=Job.__table__.c.backend.type),
        prompt_id=_PROMPT_ID,
        dispatched_at=_NOW,
        attempts=Job.attempts + 1,
        waiting_reason=None,
    )
    return await _update(session, stmt, {"p_job_id": job_id, "p_backend": backend, "p_prompt_id": prompt_id})


async def set_waiting_reason(session: AsyncSession, job_id: str, reason: str | None) -> Job | None:
    stmt = _statement(
        ("waiting",),
        [Job.status == "queued", Job.backend.is_(None)],
        waiting_reason=bindparam("p_reason", type_=Job.__table__.c.waiting_reason.type),
    )
    return await _update(session, stmt, {"p_job_id": job_id, "p_reason": reason[:500] if reason else None})


async def unclaim(session: AsyncSession, job_id: str, *, prompt_id: str, count_attempt: bool) -> Job | None:
    """Give a job back to the queue (the backend never took it, or lost it)."""
    values: dict[str, Any] = {"backend": None, "prompt_id": None, "dispatched_at": None, "progress": None}
    if not count_attempt:
        values["attempts"] = Job.attempts - 1
    stmt = _statement(
        ("unclaim", count_attempt),
        [Job.prompt_id == _PROMPT_ID, Job.status.in_(ACTIVE)],
        status="queued",
        **values,
    )
    return await _update(session, stmt, {"p_job_id": job_id, "p_prompt_id": prompt_id, "p_n_events": 1})


async def mark_running(session: AsyncSession, job_id: str, *, prompt_id: str) -> Job | None:
    stmt = _statement(
        ("running",),
        [Job.prompt_id == _PROMPT_ID, Job.status == "queued"],
        status="running",
        started_at=_NOW,
    )
    return await _update(session, stmt, {"p_job_id": job_id, "p_prompt_id": prompt_id, "p_n_events": 1})


async def mark_succeeded(
    session: AsyncSession,
    job_id: str,
    *,
    prompt_id: str,
    outputs: Sequence[Output] = (),
    progress: dict[str, Any] | None = None,
) -> Job | None:
    """`outputs`: the rows the caller added to this session for the job, logged before its status.
    `progress`: the last progress seen, when the row may hold an older one."""
    stmt = _statement(
        ("succeeded", progress is not None),
        [Job.prompt_id == _PROMPT_ID, Job.status.in_(ACTIVE)],
        status="succeeded",
        finished_at=_NOW,
        # A job that ran from cache never sent execution_start; it still started.
        started_at=func.coalesce(Job.started_at, _NOW),
        **({"progress": _PROGRESS} if progress is not None else {}),
    )
    params = {"p_job_id": job_id, "p_prompt_id": prompt_id, "p_n_events": 1}
    if progress is not None:
        params["p_progress"] = progress
    return await _update(session, stmt, params, outputs=outputs)


async def mark_failed(
    session: AsyncSession,
    job_id: str,
    *,
    error: dict[str, Any],
    prompt_id: str | None,
    progress: dict[str, Any] | None = None,
) -> Job | None:
    where: list[Any] = [Job.status.in_(ACTIVE)]
    params: dict[str, Any] = {"p_job_id": job_id, "p_error": error, "p_n_events": 1}
    if prompt_id is not None:
        where.append(Job.prompt_id == _PROMPT_ID)
        params["p_prompt_id"] = prompt_id
    if progress is not None:
        params["p_progress"] = progress
    stmt = _statement(
        ("failed", prompt_id is not None, progress is not None),
        where,
        status="failed",
        finished_at=_NOW,
        error=bindparam("p_error", type_=Job.__table__.c.error.type),
        **({"progress": _PROGRESS} if progress is not None else {}),
    )
    return await _update(session, stmt, params)


async def mark_canceled(session: AsyncSession, job_id: str) -> Job | None:
    """Cancel a job that has not ended. `cancel_requested` stays set until the backend has been told."""
    stmt = _statement(
        ("canceled",),
        [Job.status.in_(ACTIVE)],
        status="canceled",
        finished_at=_NOW,
        cancel_requested=Job.backend.is_not(None),
    )
    return await _update(session, stmt, {"p_job_id": job_id, "p_n_events": 1})


async def canceled_needing_cleanup(session: AsyncSession, limit: int = 100) -> list[Job]:
    stmt = (
        select(Job)
        .where(Job.status == "canceled", Job.cancel_requested.is_(True), Job.backend.is_not(None))
        .limit(limit)
    )
    return list((await session.execute(stmt)).scalars())


async def cleanup_done(session: AsyncSession, job_id: str) -> Job | None:
    stmt = _statement(("cleaned",), [Job.cancel_requested.is_(True)], cancel_requested=False)
    return await _update(session, stmt, {"p_job_id": job_id})


async def set_progress(session: AsyncSession, job_id: str, progress: dict[str, Any]) -> Job | None:
    stmt = _statement(("progress",), [Job.status.in_(ACTIVE)], progress=_PROGRESS)
    return await _update(session, stmt, {"p_job_id": job_id, "p_progress": progress})
