"""SQLite run on the loop's thread (app/db/sqlite_inline.py): writers of one process wait for each
other without blocking the loop, a lock held by another process is waited for (and given up on after
the busy timeout, as SQLite itself would), and results are what the aiosqlite driver gave."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from app.db.engine import create_engine


async def _ticks_during(coro: object, period: float = 0.005) -> tuple[object, int]:
    """Run `coro` while another task counts loop turns: a blocked loop counts none."""
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(period)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        return await coro, ticks  # type: ignore[misc]
    finally:
        ticker.cancel()


async def test_rows_types_and_errors_as_with_aiosqlite(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/a.db")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE, n REAL)"))
            result = await conn.execute(text("INSERT INTO t (v, n) VALUES ('a', 1.5)"))
            assert result.rowcount == 1 and result.lastrowid == 1
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT id, v, n FROM t"))).all()
            assert [tuple(r) for r in rows] == [(1, "a", 1.5)]
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
        with pytest.raises(Exception, match="UNIQUE"):
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t (v) VALUES ('a')"))
        async with engine.begin() as conn:  # the failed transaction was rolled back, the row kept
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 1
    finally:
        await engine.dispose()


async def test_writers_in_one_process_wait_for_each_other_without_blocking_the_loop(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    first, second = create_engine(url), create_engine(url)
    try:
        async with first.begin() as conn:
            await conn.execute(text("CREATE TABLE t (v TEXT)"))
        holder = await first.connect()
        await holder.execute(text("INSERT INTO t VALUES ('first')"))  # holds the write lock

        async def second_writes() -> float:
            started = time.monotonic()
            async with second.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES ('second')"))
            return time.monotonic() - started

        waiting = asyncio.create_task(_ticks_during(second_writes()))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # it waits for the lock...
        await holder.commit()  # ...and goes on as soon as it is released
        await holder.close()
        waited, ticks = await waiting
        assert 0.2 <= waited < 0.5 and ticks >= 10  # the loop kept running meanwhile
        async with second.connect() as conn:
            assert (await conn.execute(text("SELECT v FROM t ORDER BY rowid"))).scalars().all() == [
                "first",
                "second",
            ]
    finally:
        await first.dispose()
        await second.dispose()


async def test_another_process_lock_is_waited_for_then_given_up_on(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    engine = create_engine(f"sqlite:///{path}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (v TEXT)"))
        other = sqlite3.connect(path, isolation_level=None)  # stands for another process
        other.execute("BEGIN IMMEDIATE")

        async def write() -> None:
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES ('mine')"))

        task = asyncio.create_task(_ticks_during(write()))
        await asyncio.sleep(0.3)
        assert not task.done()
        other.execute("COMMIT")  # released: the waiting write goes through
        _, ticks = await asyncio.wait_for(task, 2)
        assert ticks >= 20

        other.execute("BEGIN IMMEDIATE")
        quick = _engine_with_timeout(f"sqlite:///{path}", 0.3)
        started = time.monotonic()
        with pytest.raises(OperationalError, match="locked"):
            async with quick.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES ('late')"))
        assert 0.3 <= time.monotonic() - started < 1.0
        other.execute("ROLLBACK")
        other.close()
        await quick.dispose()
    finally:
        await engine.dispose()


def _engine_with_timeout(url: str, seconds: float):  # noqa: ANN202
    from sqlalchemy.ext.asyncio import create_async_engine

    from app.db.sqlite_inline import inline_creator

    return create_async_engine(
        url.replace("sqlite://", "sqlite+aiosqlite://"),
        pool_size=1,
        max_overflow=0,
        async_creator=inline_creator(url.replace("sqlite://", "sqlite+aiosqlite://"), {"timeout": seconds}),
    )
