"""Following one job's events, as the SSE route sends them: the current state (and, after a
`Last-Event-ID`, what the client missed), then the live events, each once and in order, until the
final status.

The order of the steps is what makes "no gap, no repeat" hold: subscribe to the bus first, then
read the row or the log, then drop live events whose id was already sent. An event committed
before the read is in what was read; one committed after it is published after the
subscription, so it arrives live.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import TERMINAL, Job
from app.domain import jobs
from app.domain.events.bus import EventBus, JobEvent, Subscription
from app.domain.events.log import EventLog
from app.domain.users import Principal
from app.domain.views import v1_progress
from app.storage.signing import UrlSigner


class JobFollower:
    def __init__(
        self,
        bus: EventBus,
        event_log: EventLog,
        sub: Subscription,
        job_id: str,
        first: list[JobEvent],
        last: int,
        done: bool,
    ) -> None:
        self._bus = bus
        self._event_log = event_log
        self._sub = sub
        self._job_id = job_id
        self._first = first
        self._last = last
        self._done = done

    @classmethod
    async def open(
        cls,
        session: AsyncSession,
        bus: EventBus,
        event_log: EventLog,
        signer: UrlSigner,
        principal: Principal,
        job_id: str,
        *,
        after: int | None,
        previews: bool,
        any_user: bool = False,
    ) -> JobFollower:
        """Another user's job, or a missing one: NotFound, before anything is sent (`any_user`: an
        admin's stream of any user's job; the caller checked the rights)."""

        async def read(fresh: bool) -> Job:
            if any_user:
                return await jobs.get_any(session, job_id, fresh=fresh)
            return await jobs.get_owned(session, principal, job_id, fresh=fresh)

        await read(False)
        sub = bus.subscribe_job(job_id, previews=previews)
        try:
            # Read again now that we are subscribed (see the module's docstring).
            job = await read(True)
            view = await jobs.view(session, job, signer)
            if after is None:
                first = [
                    JobEvent(
                        job.id, job.user_id, "status", view, terminal=job.status in TERMINAL, id=job.event_seq
                    )
                ]
                last = job.event_seq
            else:
                # Every stream starts with the job as it is now (the contract); a resumed one sends
                # it without an id, so the client's Last-Event-ID still points into the log, and then
                # what the client missed, each once and in order.
                missed = await event_log.replay(session, job.id, after)
                last = max([after, *(e.id or 0 for e in missed)])
                if job.status in TERMINAL and last < job.event_seq:
                    # The log no longer holds the job's end (retention pruned it): what the client
                    # missed is summed up by the job as it is now, under its last id, and the stream ends.
                    first = [
                        *missed,
                        JobEvent(job.id, job.user_id, "status", view, terminal=True, id=job.event_seq),
                    ]
                    last = job.event_seq
                else:
                    first = [JobEvent(job.id, job.user_id, "status", view), *missed]
            done = job.status in TERMINAL and last >= job.event_seq
        except BaseException:
            bus.unsubscribe(sub)
            raise
        return cls(bus, event_log, sub, job_id, first, last, done)

    async def events(
        self,
        sessionmaker: Callable[[], AbstractAsyncContextManager[AsyncSession]],
        *,
        still_allowed: Callable[[], Awaitable[bool]] | None = None,
        check_every: float = 10.0,
    ) -> AsyncIterator[JobEvent]:
        """Yields until the job's final status has been sent; unsubscribes when closed.
        `still_allowed` is asked every `check_every` seconds: a stream whose key was revoked (or
        whose user was disabled) ends, and the client's reconnect gets a 401."""
        try:
            for event in self._first:
                yield event
            if self._done:
                return
            next_check = time.monotonic() + check_every
            while True:
                try:
                    # asyncio.timeout, not wait_for: no task per event for each of many streams.
                    async with asyncio.timeout(max(0.0, next_check - time.monotonic())):
                        got: JobEvent | None = await self._sub.queue.get()
                except TimeoutError:
                    got = None
                if still_allowed is not None and time.monotonic() >= next_check:
                    next_check = time.monotonic() + check_every
                    if not await still_allowed():
                        return
                if self._sub.overflowed:
                    # This subscriber fell behind and live events were dropped: the log has them.
                    self._sub.overflowed = False
                    async with sessionmaker() as session:
                        missed = await self._event_log.replay(session, self._job_id, self._last)
                    for ev in missed:
                        self._last = ev.id or self._last
                        yield ev
                        if ev.terminal:
                            return
                    continue
                if got is None:
                    continue
                if got.id is not None:
                    if got.id <= self._last:
                        continue  # already sent (read from the row or the log)
                    self._last = got.id
                yield got
                if got.terminal:
                    return
        finally:
            self._bus.unsubscribe(self._sub)


def frame(event: JobEvent) -> dict[str, Any]:
    """A /v1/ws text frame."""
    data = v1_progress(event.data) if event.event == "progress" else event.data
    return {"event": event.event, "job_id": event.job_id, "id": event.id, "data": data}
