"""Live events: logged, numbered, and handed to this process's subscribers.

- Status and output events are logged by the job's transitions (app/db/job_events.py); once the
  transaction commits, `deliver` publishes them on the bus with their ids.
- Progress is coalesced per job (at most `progress_events_per_second`, but the last step of a
  node always goes out) and logged in batches by one writer task: a thousand running jobs cost a
  transaction per batch, not one per step (a loop, app/loops.py, woken by each batch). The same `deliver` publishes them after the commit.
- Previews (ComfyUI's binary preview frames) go to the subscribers that asked, and are never
  stored.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import job_events
from app.db.job_events import LoggedEvent
from app.db.models import TERMINAL
from app.domain.events.bus import EventBus, JobEvent
from app.domain.views import present_event
from app.loops import Loop
from app.storage.signing import UrlSigner

log = logging.getLogger("app.events")


@dataclass
class _Coalesce:
    last_sent: float = 0.0
    pending: dict[str, Any] | None = None
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class EventLog(Loop):
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        signer: UrlSigner,
        bus: EventBus,
        settings: Settings,
    ) -> None:
        # Woken by every progress event it queues: the interval is only a safety net.
        super().__init__("event log writer", interval=60.0, logger=log)
        self._sessionmaker = sessionmaker
        self._signer = signer
        self._bus = bus
        self._interval = 1.0 / settings.progress_events_per_second
        self._keep = settings.event_log_max_progress
        self._coalesce: dict[str, _Coalesce] = {}
        self._user_of: dict[str, str] = {}
        self._queue: list[tuple[str, str, dict[str, Any]]] = []
        self._writing: list[tuple[str, str, dict[str, Any]]] = []
        self._written = asyncio.Event()

    # ---- life cycle --------------------------------------------------------------------------

    async def stop(self, timeout: float | None = None) -> None:
        for state in self._coalesce.values():
            if state.timer is not None:
                state.timer.cancel()
        await super().stop(timeout)

    # ---- delivery ------------------------------------------------------------------------------

    def deliver(self, events: list[LoggedEvent]) -> None:
        """Publish committed, logged events to this process's subscribers (the after-commit sink)."""
        for ev in events:
            data = present_event(ev.event, ev.data, self._signer)
            terminal = ev.event == "status" and data.get("status") in TERMINAL
            self._bus.publish(JobEvent(ev.job_id, ev.user_id, ev.event, data, terminal=terminal, id=ev.seq))
            if terminal:
                self._forget(ev.job_id)

    async def replay(self, session: AsyncSession, job_id: str, after: int) -> list[JobEvent]:
        """The job's logged events after id `after`, as subscribers get them."""
        events = await job_events.since(session, job_id, after)
        result = []
        for ev in events:
            data = present_event(ev.event, ev.data, self._signer)
            terminal = ev.event == "status" and data.get("status") in TERMINAL
            result.append(JobEvent(ev.job_id, ev.user_id, ev.event, data, terminal=terminal, id=ev.seq))
        return result

    # ---- progress ------------------------------------------------------------------------------

    def progress(self, job_id: str, user_id: str, data: dict[str, Any]) -> None:
        state = self._coalesce.get(job_id)
        if state is None:
            if len(self._coalesce) > 100_000:
                # Jobs whose end this replica did not see (ended elsewhere): drop the idle ones.
                for stale in [j for j, st in self._coalesce.items() if st.timer is None]:
                    self._forget(stale)
            state = self._coalesce[job_id] = _Coalesce()
            self._user_of[job_id] = user_id
        now = time.monotonic()
        last_step = isinstance(data.get("value"), int | float) and data.get("value") == data.get("max")
        if last_step or (state.timer is None and now - state.last_sent >= self._interval):
            if state.timer is not None:
                state.timer.cancel()
                state.timer = None
            state.pending = None
            self._send_progress(job_id, user_id, data, state, now)
            return
        state.pending = data
        if state.timer is None:
            delay = max(0.0, state.last_sent + self._interval - now)
            state.timer = asyncio.get_running_loop().call_later(delay, self._flush_one, job_id)

    def _flush_one(self, job_id: str) -> None:
        state = self._coalesce.get(job_id)
        if state is None:
            return
        state.timer = None
        if state.pending is not None:
            data, state.pending = state.pending, None
            self._send_progress(job_id, self._user_of[job_id], data, state, time.monotonic())

    def _send_progress(
        self, job_id: str, user_id: str, data: dict[str, Any], state: _Coalesce, now: float
    ) -> None:
        state.last_sent = now
        self._queue.append((job_id, user_id, data))
        self.wake()

    def _forget(self, job_id: str) -> None:
        state = self._coalesce.pop(job_id, None)
        self._user_of.pop(job_id, None)
        if state is not None and state.timer is not None:
            state.timer.cancel()

    async def settle(self, job_id: str, timeout: float = 5.0) -> None:
        """Wait until the job's progress so far is logged: called before a job's final transition,
        so that its last progress comes before its final status."""
        state = self._coalesce.get(job_id)
        if state is not None and state.timer is not None:
            state.timer.cancel()
            self._flush_one(job_id)
        deadline = time.monotonic() + timeout
        while any(item[0] == job_id for item in (*self._queue, *self._writing)):
            self._written.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._written.wait(), remaining)
            except TimeoutError:
                return

    async def run_once(self) -> None:
        """Write what is queued, a batch per transaction, until nothing is."""
        while self._queue:
            self._writing, self._queue = self._queue, []
            try:
                async with self._sessionmaker() as session:
                    await job_events.record_progress(session, self._writing, keep=self._keep)
                    await session.commit()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - progress is advisory; the writer must go on
                log.exception("writing %d progress events", len(self._writing))
            finally:
                self._writing = []
                self._written.set()

    def node_started(self, job_id: str, user_id: str, data: dict[str, Any]) -> None:
        """A node started (its progress for /api/v2, whose node counts move with it): live only, like
        a preview, so the logged events and their ids stay /v1's."""
        if self._bus.listening(job_id, user_id, event="progress"):
            self._bus.publish(JobEvent(job_id, user_id, "progress", data))

    # ---- previews ------------------------------------------------------------------------------

    def preview(self, job_id: str, user_id: str, content_type: str, image: bytes, node: str | None) -> None:
        # Encoded once, and only when someone here asked for previews.
        if not self._bus.listening(job_id, user_id, previews=True):
            return
        data = {"content_type": content_type, "node": node, "image": base64.b64encode(image).decode("ascii")}
        self._bus.publish(JobEvent(job_id, user_id, "preview", data))
