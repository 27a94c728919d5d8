"""What /readyz asks of the gateway's own parts (the backends are the pool's to tell)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.engine import ping


async def database_answers(sessionmaker: async_sessionmaker[AsyncSession]) -> bool:
    try:
        async with sessionmaker() as session:
            await ping(session)
    except Exception:  # noqa: BLE001 - any failure means "not ready", and says so
        return False
    return True
