"""Announcements that a key, a user or a template changed: replicas forget what they cached of them
(app/domain/read_cache.py)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

CHANNEL = "gateway_changes"


async def announce(session: AsyncSession) -> None:
    """Tell every replica, when the session's transaction commits, that a key, a user or a template
    changed (NOTIFY is transactional: a change rolled back announces nothing). With SQLite there is
    one gateway process, which forgets by itself (a CLI command's change waits out the cache's time
    to live)."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL})
