"""SQLite for SQLAlchemy's aiosqlite dialect, run on the event loop's thread.

aiosqlite hands every call (cursor, execute, fetch, close, commit, rollback) to a thread of its
own and back: four round trips per statement, each a queue put, a thread wake-up and a
`call_soon_threadsafe` that wakes the loop. For the gateway's statements (microseconds of SQLite
work on one pooled connection, WAL, `synchronous=NORMAL`, so no fsync per commit) those hops cost
far more CPU than the statements: a third of a job's CPU in profiles. This module gives the dialect
an object with aiosqlite's surface whose coroutines call sqlite3 directly and finish without
suspending.

Waiting for SQLite's write lock must not block the loop either: the API, the dispatcher and the
outbound guard each have a connection to the file, and other processes (a CLI command, a second
gateway) may write too. So the inline connections never wait inside SQLite (busy timeout 0): a
call that meets SQLITE_BUSY awaits the end of a write transaction in this process (every commit,
rollback and close wakes the waiters of its file) or a short poll for other processes, then tries
again, up to the configured timeout, and then fails as SQLite's own busy handler would. A call that
failed with SQLITE_BUSY had no effect (a transaction's first write takes the lock before it changes
anything), so trying it again is safe. The poll also bounds a waiter that missed a wake-up.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from typing import Any

from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine import make_url

_SQLITE_BUSY = 5
_FIRST_POLL = 0.002
_MAX_POLL = 0.05


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == _SQLITE_BUSY or "locked" in str(exc)


class _Gate:
    """Where the connections of one database file wait for each other's write transactions."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    async def wait(self, timeout: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self._waiters.add(future)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(future)

    def release(self) -> None:
        if not self._waiters:
            return
        waiters, self._waiters = self._waiters, set()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for future in waiters:
            loop = future.get_loop()
            if loop is running:
                _resolve(future)
            elif not loop.is_closed():  # another app's loop, in another thread
                loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_gates: dict[str, _Gate] = {}


class _Waiter:
    """Runs calls inline; on SQLITE_BUSY, waits (asynchronously) and tries again."""

    def __init__(self, gate: _Gate, busy_seconds: float) -> None:
        self._gate = gate
        self._busy_seconds = busy_seconds

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._busy_seconds
        poll = _FIRST_POLL
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return fn(*args)  # the last try: its error, if any, is the caller's
            await self._gate.wait(min(poll, left))
            poll = min(poll * 2, _MAX_POLL)
            try:
                return fn(*args)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise


class InlineCursor:
    """aiosqlite.Cursor's surface, as SQLAlchemy's adapter uses it."""

    def __init__(self, cursor: sqlite3.Cursor, waiter: _Waiter) -> None:
        self._cursor = cursor
        self._waiter = waiter

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cursor.close()

    async def execute(self, sql: str, parameters: Any = None) -> InlineCursor:
        if parameters is None:
            await self._waiter.call(self._cursor.execute, sql)
        else:
            await self._waiter.call(self._cursor.execute, sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Any) -> InlineCursor:
        await self._waiter.call(self._cursor.executemany, sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return await self._waiter.call(self._cursor.fetchone)

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        size = self._cursor.arraysize if size is None else size
        return await self._waiter.call(self._cursor.fetchmany, size)

    async def fetchall(self) -> list[Any]:
        return await self._waiter.call(self._cursor.fetchall)

    async def close(self) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class _RunNow:
    """Stands in for aiosqlite's request queue, which SQLAlchemy's adapter feeds directly to set
    `isolation_level`: run the function now and resolve its future."""

    def put_nowait(self, item: tuple[asyncio.Future[Any], Callable[[], Any]]) -> None:
        future, function = item
        try:
            future.set_result(function())
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting caller, as aiosqlite does
            future.set_exception(exc)


class InlineConnection:
    """aiosqlite.Connection's surface, as SQLAlchemy's aiosqlite dialect uses it."""

    def __init__(self, conn: sqlite3.Connection, gate: _Gate, busy_seconds: float) -> None:
        self._conn = conn
        # The dialect checks `_connection` for "still open" and feeds `_tx` directly.
        self._connection: sqlite3.Connection | None = conn
        self._tx = _RunNow()
        self._gate = gate
        self._waiter = _Waiter(gate, busy_seconds)

    def cursor(self) -> InlineCursor:
        return InlineCursor(self._conn.cursor(), self._waiter)

    async def commit(self) -> None:
        try:
            await self._waiter.call(self._conn.commit)
        finally:
            self._gate.release()

    async def rollback(self) -> None:
        try:
            await self._waiter.call(self._conn.rollback)
        finally:
            self._gate.release()

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()
            self._gate.release()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction


def inline_creator(url: str, connect_args: dict[str, Any]) -> Callable[[], Any]:
    """An `async_creator` for `create_async_engine`: opens the file as the aiosqlite dialect
    would (same URL parsing, same sqlite3 arguments); `timeout` is the busy timeout, kept by
    `_Waiter`."""
    cargs, cparams = SQLiteDialect_aiosqlite().create_connect_args(make_url(url))
    cparams = {**cparams, **connect_args}
    busy_seconds = float(cparams.pop("timeout", 5.0))
    # SQLite itself never waits for the lock (see the module's docstring). The pool lends the
    # connection to one task at a time, whichever thread runs the loop that task is on.
    cparams.update(timeout=0, check_same_thread=False)
    database = str(cparams.get("database", cargs[0] if cargs else ""))
    gate = _gates.setdefault(os.path.realpath(database) if database != ":memory:" else database, _Gate())

    async def connect() -> InlineConnection:
        return InlineConnection(sqlite3.connect(*cargs, **cparams), gate, busy_seconds)  # type: ignore[call-overload]  # SQLAlchemy's connect args

    return connect
