"""Events logged by other replicas, for this replica's subscribers (PostgreSQL only).

Every logged event is announced with NOTIFY (job id, user id, event id) when its transaction
commits (app/db/job_events.py). This replica LISTENs on one connection of its own; for an event
of a job someone here follows, it reads the event from the log and publishes it on the local bus.
Announcements are gathered for a moment so that a burst costs one query. With SQLite there is
one process, and the after-commit delivery is all there is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import job_events
from app.db.engine import is_sqlite, normalize_url
from app.domain.events.bus import EventBus
from app.domain.events.log import EventLog
from app.loops import Backoff, Loop

log = logging.getLogger("app.events")


class EventRelay(Loop):
    # A round listens for as long as its connection lasts: a stop cuts it short.
    finish_round_at_stop = False

    def __init__(
        self,
        database_url: str,
        sessionmaker: async_sessionmaker[AsyncSession],
        event_log: EventLog,
        bus: EventBus,
        *,
        origin: str,
        reconnect_seconds: float = 2.0,
    ) -> None:
        super().__init__(
            "event relay",
            interval=reconnect_seconds,
            backoff=Backoff(initial=reconnect_seconds, cap=max(reconnect_seconds, 10.0)),
            logger=log,
        )
        self._url = database_url
        self._sessionmaker = sessionmaker
        self._event_log = event_log
        self._bus = bus
        self._origin = origin
        self._reconnect = reconnect_seconds
        self._wanted: list[tuple[str, int]] = []
        self._flushing: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        # Called for the events another replica logged that may give a dispatcher work (a job
        # queued, a job's end): the dispatcher of a replica that shares the backends wakes at
        # once, whoever took the request.
        self.on_remote_event: Callable[[], None] | None = None
        # Other channels listened to on the same connection: name -> callback.
        self.channels: dict[str, Callable[..., None]] = {}

    async def start(self) -> None:
        if is_sqlite(self._url):
            return
        await super().start()

    async def stop(self, timeout: float | None = None) -> None:
        await super().stop(timeout)
        if self._flushing is not None:
            self._flushing.cancel()
            await asyncio.gather(self._flushing, return_exceptions=True)

    def _dsn(self) -> str:
        return (
            make_url(normalize_url(self._url))
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )

    async def run_once(self) -> None:
        """Listen until the connection is lost. One that cannot be made raises (the loop backs
        off); one lost after it listened ends the round (the next reconnects after the interval)."""
        import asyncpg

        conn = None
        try:
            conn = await asyncpg.connect(self._dsn())
            await conn.add_listener(job_events.CHANNEL, self._on_notify)
            for channel, callback in self.channels.items():
                await conn.add_listener(channel, callback)
            self.listening.set()
            while not conn.is_closed():
                # asyncpg delivers notifications on its own; this only notices a lost connection.
                await asyncio.sleep(self._reconnect)
                await conn.execute("SELECT 1")
        except Exception as exc:
            if not self.listening.is_set():
                raise
            log.warning("event relay: %s; reconnecting", exc)
        finally:
            self.listening.clear()
            if conn is not None and not conn.is_closed():
                await conn.close()

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        parsed = job_events.payload_of(payload)
        if parsed is None:
            return
        origin, job_id, user_id, seq, wakes = parsed
        if origin == self._origin:
            return
        if wakes and self.on_remote_event is not None:
            self.on_remote_event()
        if not self._bus.listening(job_id, user_id):
            return
        self._wanted.append((job_id, seq))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush(), name="event relay read")

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the rest of a burst arrive
        while self._wanted:
            wanted, self._wanted = self._wanted, []
            try:
                async with self._sessionmaker() as session:
                    events = await job_events.by_ids(session, wanted)
            except Exception:  # noqa: BLE001
                log.exception("event relay: reading %d events", len(wanted))
                continue
            self._event_log.deliver(events)
