"""The connection pool serves waiters first come, first served (app/db/fair_pool.py): a connection
given back goes to the longest waiter, never to a task that asked after it; a waiter that gives up
or is cancelled is passed over, and no connection is lost on the way."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import create_async_engine

from app.db.engine import create_engine
from app.db.fair_pool import FairAsyncPool


async def test_waiters_get_the_connection_in_the_order_they_asked(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/a.db")  # one connection
    order: list[int] = []

    async def use(i: int) -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            order.append(i)

    try:
        async with engine.connect() as held:
            await held.execute(text("SELECT 1"))
            waiters = [asyncio.create_task(use(i)) for i in range(5)]
            await asyncio.sleep(0.05)  # all five wait now
        # Given back; this task asks again at once, before any waiter could run: it must not
        # overtake the five (as tasks woken by a request's end did in the server).
        await use(10)
        await asyncio.gather(*waiters)
        assert order == [0, 1, 2, 3, 4, 10]
    finally:
        await engine.dispose()


async def test_a_waiter_that_times_out_or_is_cancelled_is_passed_over(tmp_path: Path) -> None:
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{tmp_path}/b.db",
        poolclass=FairAsyncPool,
        pool_size=1,
        max_overflow=0,
        pool_timeout=0.1,
    )
    try:
        async with engine.connect() as held:
            await held.execute(text("SELECT 1"))
            with pytest.raises(PoolTimeout):
                async with engine.connect():
                    pass
            cancelled = asyncio.create_task(engine.connect().__aenter__())
            await asyncio.sleep(0.02)
            cancelled.cancel()
            await asyncio.gather(cancelled, return_exceptions=True)
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        async with engine.connect() as conn:  # the one connection is still there to take
            assert (await conn.execute(text("SELECT 2"))).scalar_one() == 2
    finally:
        await engine.dispose()
