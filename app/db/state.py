"""Values the gateway generates once and keeps in the database (shared by every replica)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.models import GatewayState


async def get_or_create(
    sessionmaker: async_sessionmaker[AsyncSession], key: str, make: Callable[[], str]
) -> str:
    async with sessionmaker() as session:
        row = await session.get(GatewayState, key)
        if row is not None:
            return row.value
        session.add(GatewayState(key=key, value=make()))
        try:
            await session.commit()
        except IntegrityError:
            # Another replica created it first: use theirs.
            await session.rollback()
    async with sessionmaker() as session:
        row = await session.get(GatewayState, key)
        assert row is not None
        return row.value


# Arbitrary keys of PostgreSQL advisory locks, one per purpose (the values only have to differ).
_STARTUP_LOCK = text("SELECT pg_advisory_xact_lock(7140513)")
_CLAIM_LOCK = text("SELECT pg_advisory_xact_lock(7140514)")


async def lock_startup(session: AsyncSession) -> None:
    """Replicas starting together on an empty database prepare it one at a time (the bootstrap
    admin, the built-in templates, the configured backends): held until the transaction ends.
    SQLite needs none (one process, and its writes are serialized)."""
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        await session.execute(_STARTUP_LOCK)


async def lock_claims(session: AsyncSession) -> None:
    """Several dispatching replicas pick and claim one at a time, so that per-user `max_running`
    holds across them (the pick reads the counts its claims change); held until the commit.

    Giving jobs back to the queue takes it too (PostgreSQL only, before any row is locked): a
    claim moves a user's counter rows queued -> dispatched and a give-back moves them the other
    way, so the two, run at once, locked the same two rows (app/db job_counts triggers) in
    opposite orders and deadlocked."""
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        await session.execute(_CLAIM_LOCK)
