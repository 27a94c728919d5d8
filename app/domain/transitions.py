"""A job's status transitions, the unit of work's step: the row's conditional UPDATE (app/db/jobs.py),
then, in the same transaction, the events it causes: the logged events (the durable, ordered log
that Last-Event-ID and live subscribers read) and the webhook deliveries (the outbox).

Every status change goes through here, so that the log and the outbox hear of each one exactly
when it commits, and never of one that did not happen: when the UPDATE's condition does not hold
(the job already moved on), nothing is written and None comes back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import job_events, webhooks
from app.db import jobs as repo
from app.db.job_events import LoggedEvent
from app.db.models import Job, Output
from app.db.state import lock_claims
from app.domain.views import job_snapshot, output_snapshot


async def created(session: AsyncSession, job: Job) -> None:
    """Insert a new job's row with its first status logged (event 1), in the caller's transaction."""
    job.event_seq = 1
    await repo.insert_new(session, job)
    await job_events.append(session, [LoggedEvent(job.id, job.user_id, 1, "status", job_snapshot(job, []))])


async def _record(session: AsyncSession, job: Job | None, outputs: Sequence[Output] = ()) -> Job | None:
    """The events of a status change that happened: `outputs` first, then the status, under the
    ids the UPDATE took (they end at `job.event_seq`)."""
    if job is None:
        return None
    last = job.event_seq
    first = last - len(outputs)
    events = [
        LoggedEvent(job.id, job.user_id, first + i, "output", output_snapshot(out))
        for i, out in enumerate(outputs)
    ]
    events.append(LoggedEvent(job.id, job.user_id, last, "status", job_snapshot(job, outputs)))
    await job_events.append(session, events)
    await webhooks.on_transition(session, job)
    return job


async def unclaim(session: AsyncSession, job_id: str, *, prompt_id: str, count_attempt: bool) -> Job | None:
    """Give a job back to the queue (the backend never took it, or lost it); one at a time with
    the dispatchers' claims (see `lock_claims`)."""
    await lock_claims(session)
    job = await repo.unclaim(session, job_id, prompt_id=prompt_id, count_attempt=count_attempt)
    return await _record(session, job)


async def mark_running(session: AsyncSession, job_id: str, *, prompt_id: str) -> Job | None:
    return await _record(session, await repo.mark_running(session, job_id, prompt_id=prompt_id))


async def mark_succeeded(
    session: AsyncSession,
    job_id: str,
    *,
    prompt_id: str,
    outputs: Sequence[Output] = (),
    progress: dict[str, Any] | None = None,
) -> Job | None:
    """`outputs`: the job's new output rows, inserted here if the job could end (and logged before
    its status). `progress`: the last progress seen, when the row may hold an older one."""
    job = await repo.mark_succeeded(session, job_id, prompt_id=prompt_id, outputs=outputs, progress=progress)
    if job is not None:
        await repo.insert_outputs(session, outputs)
    return await _record(session, job, outputs)


async def mark_failed(
    session: AsyncSession,
    job_id: str,
    *,
    error: dict[str, Any],
    prompt_id: str | None,
    progress: dict[str, Any] | None = None,
) -> Job | None:
    job = await repo.mark_failed(session, job_id, error=error, prompt_id=prompt_id, progress=progress)
    return await _record(session, job)


async def mark_canceled(session: AsyncSession, job_id: str) -> Job | None:
    """Cancel a job that has not ended. `cancel_requested` stays set until the backend has been told."""
    return await _record(session, await repo.mark_canceled(session, job_id))
