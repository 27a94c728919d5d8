"""`Prefer: wait=N` on POST /v1/generate (RFC 7240): hold the answer until the job ends.

A waiting request holds no database connection and polls nothing: it listens on the event bus
for its job's final status (subscribed before the job's row is committed, so that even a job
that ends at once cannot be missed) and reads the row once at the end.
"""

from __future__ import annotations

import asyncio
import time

from app.domain.errors import ValidationFailed
from app.domain.events.bus import Subscription


def parse_prefer_wait(header: str | None, maximum: int) -> int | None:
    """The wait asked for, capped at `maximum`; None when the request asks for none.
    `Prefer: wait` alone asks for the maximum. Other preferences are ignored."""
    if not header:
        return None
    for pref in header.split(","):
        name, _, value = pref.split(";", 1)[0].partition("=")
        if name.strip().lower() != "wait":
            continue
        value = value.strip().strip('"')
        if value == "":
            return maximum
        if not value.isdigit():
            raise ValidationFailed(
                "Prefer: wait takes a whole number of seconds, e.g. 'Prefer: wait=10'.",
                errors=[{"field": "Prefer", "message": "wait must be a non-negative integer"}],
            )
        return min(int(value[:6]), maximum)
    return None


async def until_ended(sub: Subscription, seconds: float) -> bool:
    """True once the job's final status arrived, False when `seconds` passed first. A subscriber
    that fell behind may have lost the final status: then the caller's read of the row decides."""
    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            event = await asyncio.wait_for(sub.queue.get(), remaining)
        except TimeoutError:
            return False
        if sub.overflowed or (event is not None and event.terminal):
            return True
