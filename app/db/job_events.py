"""The per-job event log: what a client that reconnects with `Last-Event-ID` missed.

Every event gets the next value of its job's counter (`jobs.event_seq`), taken by an UPDATE of
the job row, so a job's events are numbered in the order their transactions commit, on every
replica. Status and output events are written by the job's transitions, in the transition's own
transaction (app/domain/transitions.py appends them), so the log never disagrees with the row.
Progress events are written in batches by app/domain/events/log.py. This module stores events; their
public shape is app/domain/views.py's.

Events written in a session are also kept in `session.info` and handed, once the transaction
committed, to the callback the session factory was configured with (`deliver_after_commit`):
that is how live subscribers hear about them without reading the log back.
On PostgreSQL each event is also announced with NOTIFY (transactional: sent at commit), so that
the other replicas can read it from the log (app/domain/events/relay.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, case, delete, event, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from app.db import driver
from app.db.models import ACTIVE, Job, JobEvent
from app.db.types import utcnow

log = logging.getLogger("app.events")

#: The PostgreSQL channel on which committed events are announced.
CHANNEL = "gateway_job_events"
_PENDING = "pending_job_events"
_SINK = "job_event_sink"
_ORIGIN = "job_event_origin"


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    job_id: str
    user_id: str
    seq: int
    event: str  # status | progress | output
    data: dict[str, Any]


# A Core INSERT of the table, built once, run on the driver (app/db/driver.py).
_INSERT_EVENTS = driver.Statement(insert(JobEvent.__table__))  # type: ignore[arg-type]  # a Table


# On PostgreSQL the events are inserted and announced in one statement (a data-modifying CTE runs
# whether or not the query reads it): a second round trip per transition cost more than both.
_INSERT_AND_NOTIFY = text(
    "WITH logged AS ("
    " INSERT INTO job_events (job_id, seq, event, data, created_at)"
    " SELECT j, s, e, d::json, :now FROM unnest("
    "  CAST(:job_ids AS varchar[]), CAST(:seqs AS integer[]), CAST(:events AS varchar[]),"
    "  CAST(:datas AS text[])) AS t(j, s, e, d))"
    " SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS p"
).bindparams(bindparam("now", type_=JobEvent.__table__.c.created_at.type))


async def append(session: AsyncSession, events: list[LoggedEvent]) -> None:
    """Insert events and, on PostgreSQL, announce them (NOTIFY is transactional: the other
    replicas hear of them when they are committed), in one statement."""
    now = utcnow()
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        origin = session.info.get(_ORIGIN, "")
        await session.execute(
            _INSERT_AND_NOTIFY,
            {
                "now": now,
                "job_ids": [e.job_id for e in events],
                "seqs": [e.seq for e in events],
                "events": [e.event for e in events],
                "datas": [json.dumps(e.data) for e in events],
                "channel": CHANNEL,
                "payloads": [
                    f"{origin}|{e.job_id}|{e.user_id}|{e.seq}|{_waking_status(e)}|{e.event}" for e in events
                ],
            },
        )
    else:
        await driver.execute_many(
            session,
            _INSERT_EVENTS,
            [
                {"job_id": e.job_id, "seq": e.seq, "event": e.event, "data": e.data, "created_at": now}
                for e in events
            ],
        )
    session.info.setdefault(_PENDING, []).extend(events)


async def record_progress(
    session: AsyncSession, items: Sequence[tuple[str, str, dict[str, Any]]], *, keep: int
) -> None:
    """Log progress events (job id, user id, data) of jobs that have not ended, keeping only the
    progress among each job's last `keep` event ids: older progress says nothing the newer does not.

    Three statements per batch, however many jobs: one UPDATE takes every job's ids, one INSERT
    writes the events, one DELETE drops the progress that fell out of the window."""
    count: dict[str, int] = {}
    for job_id, _, _ in items:
        count[job_id] = count.get(job_id, 0) + 1
    step = case(count, value=Job.id, else_=1) if any(n > 1 for n in count.values()) else 1
    rows = await session.execute(
        update(Job)
        .where(Job.id.in_(list(count)), Job.status.in_(ACTIVE))
        .values(event_seq=Job.event_seq + step)
        .returning(Job.id, Job.event_seq)
        .execution_options(synchronize_session=False)
    )
    next_seq = {job_id: last - count[job_id] + 1 for job_id, last in rows.all()}
    events: list[LoggedEvent] = []
    for job_id, user_id, data in items:
        if job_id not in next_seq:
            continue  # ended (or gone): its final status is its last event
        seq = next_seq[job_id]
        next_seq[job_id] = seq + 1
        events.append(LoggedEvent(job_id, user_id, seq, "progress", data))
    if events:
        await append(session, events)
        # The bound: of a job's progress, only events among its last `keep` ids stay.
        await session.execute(
            delete(JobEvent)
            .where(
                JobEvent.event == "progress",
                JobEvent.job_id.in_(list(next_seq)),
                JobEvent.seq
                <= select(Job.event_seq).where(Job.id == JobEvent.job_id).scalar_subquery() - keep,
            )
            .execution_options(synchronize_session=False)
        )


async def since(session: AsyncSession, job_id: str, after: int, limit: int = 10_000) -> list[LoggedEvent]:
    """A job's logged events after id `after`, in order."""
    user_id = (await session.execute(select(Job.user_id).where(Job.id == job_id))).scalar_one_or_none()
    if user_id is None:
        return []
    rows = await session.execute(
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.seq > after)
        .order_by(JobEvent.seq)
        .limit(limit)
    )
    return [LoggedEvent(r.job_id, user_id, r.seq, r.event, r.data) for r in rows.scalars()]


async def by_ids(session: AsyncSession, keys: Sequence[tuple[str, int]]) -> list[LoggedEvent]:
    """Events named by (job id, seq), in order per job (for events announced by other replicas)."""
    if not keys:
        return []
    job_ids = sorted({k[0] for k in keys})
    wanted = set(keys)
    rows = await session.execute(
        select(JobEvent, Job.user_id)
        .join(Job, Job.id == JobEvent.job_id)
        .where(JobEvent.job_id.in_(job_ids), JobEvent.seq >= min(k[1] for k in keys))
        .order_by(JobEvent.job_id, JobEvent.seq)
    )
    return [
        LoggedEvent(ev.job_id, user_id, ev.seq, ev.event, ev.data)
        for ev, user_id in rows.all()
        if (ev.job_id, ev.seq) in wanted
    ]


def deliver_after_commit(
    sessionmaker: async_sessionmaker[AsyncSession], sink: Callable[[list[LoggedEvent]], None], origin: str
) -> None:
    """Sessions of this factory hand the events they logged to `sink` once their transaction has
    committed (never before: a subscriber must find in the log what it was told)."""
    # Merged into what the factory's sessions already carry (the webhook sender's wake-up).
    sessionmaker.configure(info={**sessionmaker.kw.get("info", {}), _SINK: sink, _ORIGIN: origin})


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    sink = session.info.get(_SINK)
    if pending and sink is not None:
        try:
            sink(pending)
        except Exception:  # noqa: BLE001 - the transaction did commit; its caller must not think otherwise
            log.exception("delivering %d committed job events", len(pending))


@event.listens_for(Session, "after_soft_rollback")
def _after_rollback(session: Session, previous_transaction: Any) -> None:
    session.info.pop(_PENDING, None)


# The statuses after which a dispatcher may have work it did not have before: a job to place, or
# a user's running job fewer (`max_running`). Running, progress and outputs change nothing for it.
_WAKING = frozenset({"queued", "succeeded", "failed", "canceled"})


def _waking_status(event: LoggedEvent) -> str:
    status = event.data.get("status") if event.event == "status" else None
    return status if status in _WAKING else ""


@dataclass(frozen=True, slots=True)
class Announced:
    """An event as another replica announced it (NOTIFY): enough to decide whether to read it."""

    origin: str
    job_id: str
    user_id: str
    seq: int
    # The job's new status when it may give a dispatcher work (see _WAKING), else None.
    waking_status: str | None
    # status | progress | output
    event: str


def payload_of(raw: str) -> Announced | None:
    """The announcement in a NOTIFY payload; None if malformed. A payload of four fields (from a
    replica of an earlier version) is taken for a job queued."""
    parts = raw.split("|")
    if len(parts) not in (4, 6) or not parts[3].isdigit():
        return None
    status, event = (parts[4] or None, parts[5]) if len(parts) == 6 else ("queued", "status")
    return Announced(parts[0], parts[1], parts[2], int(parts[3]), status, event)
