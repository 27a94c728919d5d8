"""Values the gateway generates once and keeps in the database (shared by every replica)."""

from __future__ import annotations

from collections.abc import Callable

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
