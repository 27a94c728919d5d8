"""In-process fan-out of job events to live subscribers (SSE, WebSocket).

The database row is the truth; these events only tell subscribers that it changed, carrying the
new view so that a thousand subscribers do not each re-read the row. A slow subscriber never
blocks the dispatcher: its queue is bounded and, when full, it is told to resynchronise.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class JobEvent:
    job_id: str
    user_id: str
    event: str  # status | progress | output
    data: dict[str, Any]
    terminal: bool = False
    # The event's id in the job's event log (app/db/job_events.py); None for previews (never stored).
    id: int | None = None
    # The event as sent on the wire, encoded once for all of its subscribers (see app/api/events_sse.py).
    encoded: bytes | None = None


#: Events a subscriber may have waiting. A stream that falls this far behind (its client reads
#: slower than its jobs change) drops what comes next and resynchronises from the event log or
#: the row, instead of holding an unbounded backlog in memory.
QUEUE_SIZE = 256


@dataclass(eq=False)
class Subscription:
    scope: str  # "job", "user" or "all"
    key: str
    # Looked up when the subscription is made (not bound at import), so a test can shrink it.
    queue: asyncio.Queue[JobEvent | None] = field(default_factory=lambda: asyncio.Queue(maxsize=QUEUE_SIZE))
    # Set when events were dropped because the subscriber fell behind.
    overflowed: bool = False
    # Only subscribers that asked get `preview` events (images, large).
    previews: bool = False
    # A waiter for a job's end (`Prefer: wait`): only status events are queued for it, and another
    # replica's progress and outputs are not read from the log for it (app/domain/events/relay.py).
    statuses_only: bool = False


class EventBus:
    def __init__(self, on_lag: Callable[[Subscription], None] | None = None) -> None:
        """`on_lag` hears of each subscriber that starts dropping events (once per fall behind)."""
        self._on_lag = on_lag
        self._by_job: dict[str, set[Subscription]] = defaultdict(set)
        self._by_user: dict[str, set[Subscription]] = defaultdict(set)
        # Admins following every user's jobs (`/v1/ws?all=true`).
        self._everyone: set[Subscription] = set()

    def subscribe_job(
        self, job_id: str, *, previews: bool = False, statuses_only: bool = False
    ) -> Subscription:
        sub = Subscription("job", job_id, previews=previews, statuses_only=statuses_only)
        self._by_job[job_id].add(sub)
        return sub

    def subscribe_user(self, user_id: str, *, previews: bool = False) -> Subscription:
        sub = Subscription("user", user_id, previews=previews)
        self._by_user[user_id].add(sub)
        return sub

    def subscribe_all(self, *, previews: bool = False) -> Subscription:
        sub = Subscription("all", "", previews=previews)
        self._everyone.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub.scope == "all":
            self._everyone.discard(sub)
            return
        index = self._by_job if sub.scope == "job" else self._by_user
        subs = index.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del index[sub.key]

    def publish(self, event: JobEvent) -> None:
        preview = event.event == "preview"
        for sub in (
            *self._by_job.get(event.job_id, ()),
            *self._by_user.get(event.user_id, ()),
            *self._everyone,
        ):
            if (preview and not sub.previews) or (sub.statuses_only and event.event != "status"):
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                if not sub.overflowed and self._on_lag is not None:
                    self._on_lag(sub)
                sub.overflowed = True

    def listening(self, job_id: str, user_id: str, *, previews: bool = False, event: str = "status") -> bool:
        """Whether anyone here would get an event of this kind of this job (a preview: anyone who
        asked; progress and outputs: anyone but the waiters for its end)."""
        subs = (*self._by_job.get(job_id, ()), *self._by_user.get(user_id, ()), *self._everyone)
        if previews:
            return any(sub.previews for sub in subs)
        if event != "status":
            return any(not sub.statuses_only for sub in subs)
        return bool(subs)
