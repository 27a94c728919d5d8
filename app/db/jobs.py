"""Job rows: every state change is a conditional UPDATE, so that a restart, a late WebSocket message
or a second dispatcher can never move a job backwards or send it twice.

Each function returns the changed row, or None when its condition did not hold; callers commit.
A function that changes `status` is called only by app/domain/transitions.py, which writes the
transition's events and webhook deliveries in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Integer, Table, bindparam, delete, func, insert, inspect, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import undefer
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from app.db import driver, leases, queue
from app.db.models import ACTIVE, TERMINAL, Job, JobEvent, Output
from app.db.pages import After, newest_first
from app.db.types import utcnow


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
    after: After | None,
) -> tuple[list[Job], str | None]:
    """Newest first; the page and the cursor of the next one."""
    stmt = select(Job)
    if user_id is not None:
        stmt = stmt.where(Job.user_id == user_id)
    if statuses:
        stmt = stmt.where(Job.status.in_(statuses))
    return await newest_first(session, stmt, at=Job.created_at, key=Job.id, limit=limit, after=after)


async def list_with_labels(
    session: AsyncSession, user_id: str, labels: dict[str, str], *, limit: int, after: After | None
) -> tuple[list[Job], str | None]:
    """A user's jobs whose metadata has each of `labels`, newest first, with their graphs (the
    progress of /api/v2 counts their nodes)."""
    stmt = select(Job).where(Job.user_id == user_id).options(undefer(Job.workflow))
    for key, value in labels.items():
        stmt = stmt.where(Job.meta[key].as_string() == value)
    return await newest_first(session, stmt, at=Job.created_at, key=Job.id, limit=limit, after=after)


_JOBS = cast(Table, Job.__table__)
_INSERT_JOB = driver.Statement(insert(_JOBS))
_OUTPUTS = cast(Table, Output.__table__)
_INSERT_OUTPUTS = driver.Statement(insert(_OUTPUTS))


def _columns(model: type[Any]) -> list[tuple[str, str, Any]]:
    """(attribute, column name, column default) of every mapped column of `model`."""
    return [(attr.key, attr.columns[0].name, attr.columns[0].default) for attr in inspect(model).column_attrs]


_JOB_COLUMNS = _columns(Job)
_OUTPUT_COLUMNS = _columns(Output)


def _row(obj: Any, columns: list[tuple[str, str, Any]]) -> dict[str, Any]:
    """The values of a new row for a Core INSERT of `obj`; the attributes it was not given are set
    to their column defaults first, so that it reads as the row will."""
    given = obj.__dict__
    values: dict[str, Any] = {}
    for key, column, default in columns:
        if key not in given:
            value = None
            if default is not None and getattr(default, "is_scalar", False):
                value = default.arg
            elif default is not None and getattr(default, "is_callable", False):
                value = default.arg(None)
            setattr(obj, key, value)
        values[column] = getattr(obj, key)
    return values


async def insert_new(session: AsyncSession, job: Job) -> None:
    """Insert a new job's row now, in the session's transaction, as one Core statement: the ORM's
    unit of work cost more CPU than the INSERT itself on every submit. `job` is not added to the
    session (a plain object from here on) and reads as the row does."""
    await driver.execute_many(session, _INSERT_JOB, [_row(job, _JOB_COLUMNS)])


async def insert_outputs(session: AsyncSession, outputs: Sequence[Output]) -> None:
    """Insert a finished job's outputs in one Core statement, in the session's transaction (the
    ORM's unit of work cost more than the INSERT). The objects stay out of the session and read
    as their rows do."""
    await driver.execute_many(session, _INSERT_OUTPUTS, [_row(out, _OUTPUT_COLUMNS) for out in outputs])


async def reread(session: AsyncSession, job: Job) -> None:
    """The row as the database holds it now."""
    await session.refresh(job)


async def load_workflow(session: AsyncSession, job: Job) -> None:
    """Load the job's graph if the row came without it (deferred: a transition's row leaves it out)."""
    if "workflow" in inspect(job).unloaded:
        await session.refresh(job, ["workflow"])


async def get_output(
    session: AsyncSession, job_id: str, output_id: str, *, user_id: str | None
) -> Output | None:
    """An output of a job; with `user_id`, only if the job is that user's."""
    if user_id is None:
        rows = await driver.fetch(session, _OUTPUT, {"output_id": output_id, "job_id": job_id})
    else:
        params = {"output_id": output_id, "job_id": job_id, "user_id": user_id}
        rows = await driver.fetch(session, _USERS_OUTPUT, params)
    return cast(Output, driver.detached(Output, _OUTPUT_KEYS, rows[0])) if rows else None


# Built once (every download asks): building a statement costs more than running this one.
_OUTPUT_KEYS = [key for key, _, _ in _OUTPUT_COLUMNS]
_OUTPUT_SELECT = select(*(_OUTPUTS.c[column] for _, column, _ in _OUTPUT_COLUMNS)).where(
    _OUTPUTS.c.id == bindparam("output_id"), _OUTPUTS.c.job_id == bindparam("job_id")
)
_OUTPUT = driver.Statement(_OUTPUT_SELECT)
_USERS_OUTPUT = driver.Statement(
    _OUTPUT_SELECT.join(_JOBS, _JOBS.c.id == _OUTPUTS.c.job_id).where(_JOBS.c.user_id == bindparam("user_id"))
)


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
_BACKEND = bindparam("p_backend", type_=Job.__table__.c.backend.type)
_statements: dict[tuple[Any, ...], driver.Statement] = {}


def _statement(
    key: tuple[Any, ...], parts: Callable[[], tuple[Sequence[Any], dict[str, Any]]]
) -> driver.Statement:
    """The UPDATE of one job (`p_job_id`) under the WHERE clauses and SET values `parts` returns,
    RETURNING the changed row; built on first use (`parts` is called only then: building the
    expressions on every call cost a good part of the statement). A status change also takes the
    ids of its events (`p_n_events`: its outputs' and its own) in the same UPDATE: the row lock
    orders a job's events on every replica, with no second statement."""
    stmt = _statements.get(key)
    if stmt is None:
        where, values = parts()
        values.setdefault("updated_at", _NOW)
        if "status" in values:
            values["event_seq"] = Job.event_seq + _N_EVENTS
        stmt = _statements[key] = driver.Statement(
            update(_JOBS).where(_JOBS.c.id == _JOB_ID, *where).values(**values).returning(*_RETURNED)
        )
    return stmt


# What a transition returns: the row without its (deferred) graph and inputs.
_RETURNED_KEYS = [attr.key for attr in inspect(Job).column_attrs if not attr.deferred]
_RETURNED = [inspect(Job).column_attrs[key].columns[0] for key in _RETURNED_KEYS]


def _job(session: AsyncSession, row: tuple[Any, ...]) -> Job:
    """The job of a returned row. An object of it that the session holds is brought up to date and
    returned, so that no caller reads a stale copy; otherwise a new object outside the session."""
    held = session.identity_map.get(identity_key(Job, row[0]))
    if held is None:
        return cast(Job, driver.detached(Job, _RETURNED_KEYS, row))
    for key, value in zip(_RETURNED_KEYS, row, strict=True):
        set_committed_value(held, key, value)
    return held


async def _update(
    session: AsyncSession, stmt: driver.Statement, params: dict[str, Any], *, outputs: Sequence[Output] = ()
) -> Job | None:
    """Run one of the statements above; the changed row comes back, or None if nothing matched.
    The events of a status change, and its webhook outbox rows, are written under the ids the UPDATE
    took by the transition step that called this (app/domain/transitions.py), in the same
    transaction."""
    if "p_n_events" in params:
        params["p_n_events"] = len(outputs) + 1
    params.setdefault("p_now", utcnow())
    # A session made for a leased backend's work (app/dispatch/leases.py) changes a job only while
    # that lease is still held at the generation its owner acted under: a replica that lost the
    # backend (paused, cut off) can never commit a stale transition.
    fence = session.info.get(leases.FENCE_KEY)
    if fence is not None:
        stmt = _fenced(stmt, _JOBS.c.backend)
        params.update(leases.fence_params(fence))
    rows = await driver.fetch(session, stmt, params)
    return _job(session, rows[0]) if rows else None


_fenced_statements: dict[int, driver.Statement] = {}


def _fenced(stmt: driver.Statement, backend: Any) -> driver.Statement:
    """`stmt` under the lease fence of `backend` (bound as `p_fence_*`); built once per statement
    (the statements above live as long as the process, so their id is a stable key)."""
    fenced = _fenced_statements.get(id(stmt))
    if fenced is None:
        clause = cast(Any, stmt.clause)
        fenced = _fenced_statements[id(stmt)] = driver.Statement(clause.where(leases.holds_bound(backend)))
    return fenced


_CLAIM = driver.Statement(
    update(_JOBS)
    .where(
        _JOBS.c.id == _JOB_ID,
        _JOBS.c.status == "queued",
        _JOBS.c.backend.is_(None),
        _JOBS.c.cancel_requested.is_(False),
    )
    .values(
        backend=_BACKEND,
        prompt_id=_PROMPT_ID,
        dispatched_at=_NOW,
        attempts=_JOBS.c.attempts + 1,
        waiting_reason=None,
        updated_at=_NOW,
    )
    # Only whether it matched: the claim is no status change (no events), and loading the row
    # back into an ORM object cost more than the UPDATE.
    .returning(_JOBS.c.id)
)


async def claim(
    session: AsyncSession, job_id: str, *, backend: str, prompt_id: str, fence: leases.Fence | None = None
) -> str | None:
    """Hand a queued job to a backend; its id if this won, else None. Only one dispatcher can win
    this; with a `fence`, only while it holds the backend's lease. An object of the job that the
    session holds is not refreshed."""
    stmt = _CLAIM
    params = {"p_job_id": job_id, "p_backend": backend, "p_prompt_id": prompt_id, "p_now": utcnow()}
    if fence is not None:
        stmt = _fenced(stmt, _BACKEND)
        params.update(leases.fence_params(fence))
    rows = await driver.fetch(session, stmt, params)
    return rows[0][0] if rows else None


async def set_waiting_reason(session: AsyncSession, job_id: str, reason: str | None) -> Job | None:
    stmt = _statement(
        ("waiting",),
        lambda: (
            [Job.status == "queued", Job.backend.is_(None)],
            {"waiting_reason": bindparam("p_reason", type_=Job.__table__.c.waiting_reason.type)},
        ),
    )
    return await _update(session, stmt, {"p_job_id": job_id, "p_reason": reason[:500] if reason else None})


async def unclaim(session: AsyncSession, job_id: str, *, prompt_id: str, count_attempt: bool) -> Job | None:
    """Give a job back to the queue (the backend never took it, or lost it)."""

    def parts() -> tuple[list[Any], dict[str, Any]]:
        values: dict[str, Any] = {"backend": None, "prompt_id": None, "dispatched_at": None, "progress": None}
        if not count_attempt:
            values["attempts"] = Job.attempts - 1
        return [Job.prompt_id == _PROMPT_ID, Job.status.in_(ACTIVE)], {"status": "queued", **values}

    stmt = _statement(("unclaim", count_attempt), parts)
    return await _update(session, stmt, {"p_job_id": job_id, "p_prompt_id": prompt_id, "p_n_events": 1})


async def mark_running(session: AsyncSession, job_id: str, *, prompt_id: str) -> Job | None:
    stmt = _statement(
        ("running",),
        lambda: (
            [Job.prompt_id == _PROMPT_ID, Job.status == "queued"],
            {"status": "running", "started_at": _NOW},
        ),
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
    """`outputs`: the job's new outputs (their events take ids before its status's).
    `progress`: the last progress seen, when the row may hold an older one."""
    stmt = _statement(
        ("succeeded", progress is not None),
        lambda: (
            [Job.prompt_id == _PROMPT_ID, Job.status.in_(ACTIVE)],
            {
                "status": "succeeded",
                "finished_at": _NOW,
                # A job that ran from cache never sent execution_start; it still started.
                "started_at": func.coalesce(Job.started_at, _NOW),
                **({"progress": _PROGRESS} if progress is not None else {}),
            },
        ),
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
    params: dict[str, Any] = {"p_job_id": job_id, "p_error": error, "p_n_events": 1}
    if prompt_id is not None:
        params["p_prompt_id"] = prompt_id
    if progress is not None:
        params["p_progress"] = progress

    def parts() -> tuple[list[Any], dict[str, Any]]:
        where: list[Any] = [Job.status.in_(ACTIVE)]
        if prompt_id is not None:
            where.append(Job.prompt_id == _PROMPT_ID)
        values: dict[str, Any] = {
            "status": "failed",
            "finished_at": _NOW,
            "error": bindparam("p_error", type_=Job.__table__.c.error.type),
        }
        if progress is not None:
            values["progress"] = _PROGRESS
        return where, values

    stmt = _statement(("failed", prompt_id is not None, progress is not None), parts)
    return await _update(session, stmt, params)


async def mark_canceled(session: AsyncSession, job_id: str) -> Job | None:
    """Cancel a job that has not ended. `cancel_requested` stays set until the backend has been told."""
    stmt = _statement(
        ("canceled",),
        lambda: (
            [Job.status.in_(ACTIVE)],
            {"status": "canceled", "finished_at": _NOW, "cancel_requested": Job.backend.is_not(None)},
        ),
    )
    return await _update(session, stmt, {"p_job_id": job_id, "p_n_events": 1})


async def canceled_needing_cleanup(
    session: AsyncSession, limit: int = 100, backends: Sequence[str] | None = None
) -> list[Job]:
    """`backends`: only those on these backends (None: on any)."""
    stmt = (
        select(Job)
        .where(Job.status == "canceled", Job.cancel_requested.is_(True), Job.backend.is_not(None))
        .limit(limit)
    )
    if backends is not None:
        stmt = stmt.where(Job.backend.in_(backends))
    return list((await session.execute(stmt)).scalars())


async def existing_ids(session: AsyncSession, job_ids: Sequence[str]) -> set[str]:
    """Which of these jobs still have a row."""
    if not job_ids:
        return set()
    return set((await session.execute(select(Job.id).where(Job.id.in_(job_ids)))).scalars())


async def cleanup_done(session: AsyncSession, job_id: str) -> Job | None:
    stmt = _statement(("cleaned",), lambda: ([Job.cancel_requested.is_(True)], {"cancel_requested": False}))
    return await _update(session, stmt, {"p_job_id": job_id})


async def set_progress(session: AsyncSession, job_id: str, progress: dict[str, Any]) -> Job | None:
    stmt = _statement(("progress",), lambda: ([Job.status.in_(ACTIVE)], {"progress": _PROGRESS}))
    return await _update(session, stmt, {"p_job_id": job_id, "p_progress": progress})


# ---- deletion and retention --------------------------------------------------------------------


async def delete_job(session: AsyncSession, job_id: str, *, with_events: bool) -> None:
    """Delete the job's row and its outputs' rows (and, `with_events`, its logged events)."""
    await session.execute(delete(Output).where(Output.job_id == job_id))
    if with_events:
        await session.execute(delete(JobEvent).where(JobEvent.job_id == job_id))
    await session.execute(delete(Job).where(Job.id == job_id))


async def finished_before(session: AsyncSession, cutoff: datetime, limit: int) -> list[str]:
    """Up to `limit` jobs that ended before `cutoff` and still have their outputs."""
    stmt = (
        select(Job.id)
        .where(Job.status.in_(TERMINAL), Job.finished_at < cutoff, Job.outputs_expired_at.is_(None))
        .limit(limit)
    )
    return list((await session.execute(stmt)).scalars())


async def expire_outputs(session: AsyncSession, job_ids: Sequence[str]) -> None:
    """Delete the jobs' output rows and their logged events, and mark the outputs expired."""
    await session.execute(delete(Output).where(Output.job_id.in_(job_ids)))
    # The logged events name the outputs just deleted: a client resuming such a job gets
    # its current status (the tombstone) instead, see app/domain/events/live.py.
    await session.execute(delete(JobEvent).where(JobEvent.job_id.in_(job_ids)))
    await session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.outputs_expired_at.is_(None))
        .values(outputs_expired_at=utcnow())
    )
