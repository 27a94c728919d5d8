"""Engine and session factory. Built by the app's lifespan, never at import time."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, exc, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from .fair_pool import FairAsyncPool
from .sqlite_inline import inline_creator


def normalize_url(url: str) -> str:
    """Accept the URLs people paste (postgres://, postgresql://, sqlite://) and pick the async driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+asyncpg://" + url[len("postgresql://") :]
    if url.startswith("sqlite://"):
        url = "sqlite+aiosqlite://" + url[len("sqlite://") :]
    return url


def is_sqlite(url: str) -> bool:
    return make_url(normalize_url(url)).get_backend_name() == "sqlite"


def ensure_sqlite_dir(url: str) -> None:
    """Create the directory of a SQLite file, so a first start on an empty machine just works."""
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def create_engine(
    url: str,
    *,
    echo: bool = False,
    pool_size: int = 10,
    max_overflow: int | None = None,
    idle_in_transaction_seconds: float | None = None,
) -> AsyncEngine:
    """`pool_size` connections are kept once opened, and `max_overflow` (default: twice as many)
    more are opened for a burst and closed when returned (PostgreSQL).
    `idle_in_transaction_seconds` (PostgreSQL): the server ends a session left idle inside a
    transaction this long, releasing its locks: a replica paused (SIGSTOP, a frozen VM) in the
    middle of a transaction must not hold the others up (a lease row, a claim lock, a user's rate
    bucket) for as long as it stays paused."""
    url = normalize_url(url)
    if is_sqlite(url):
        ensure_sqlite_dir(url)
        engine = create_async_engine(
            url,
            echo=echo,
            # One connection: SQLite allows one writer at a time, and a second connection that
            # waits for the lock does so in SQLite's busy handler, which sleeps 1-100 ms between
            # tries. Queueing for the single connection in asyncio instead costs microseconds.
            pool_size=1,
            max_overflow=0,
            # First come, first served (app/db/fair_pool.py): with one connection, the default
            # pool let newcomers overtake waiters for seconds under a burst.
            poolclass=FairAsyncPool,
            pool_timeout=60,
            # Statements run on the loop's thread (app/db/sqlite_inline.py): no thread hop per
            # call. Waiting for another process's write lock (up to 30 s) happens in a thread.
            async_creator=inline_creator(url, {"timeout": 30}),
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            # WAL lets the API read while the dispatcher writes.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    server_settings = (
        {}
        if idle_in_transaction_seconds is None
        else {"idle_in_transaction_session_timeout": str(max(1, int(idle_in_transaction_seconds * 1000)))}
    )
    engine = create_async_engine(
        url,
        echo=echo,
        connect_args={"server_settings": server_settings} if server_settings else {},
        pool_size=pool_size,
        max_overflow=2 * pool_size if max_overflow is None else max_overflow,
        poolclass=FairAsyncPool,
    )
    _ping_when_idle(engine)
    return engine


#: A connection used this recently is taken to be alive (HikariCP's `aliveBypassWindowMs`).
ALIVE_WITHOUT_PING_SECONDS = 0.5
_LAST_USED = "gateway_last_used"


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Ping a pooled connection on checkout only if it sat idle: one that was in use half a second
    ago is alive. SQLAlchemy's `pool_pre_ping` pinged on every checkout, a round trip that cost
    a third of the CPU of a short transaction. A connection that dies within that half second (the
    server restarted) fails the one statement that meets it, and that failure invalidates the
    whole pool, so the next checkout connects anew."""

    @event.listens_for(engine.sync_engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info[_LAST_USED] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        last = record.info.get(_LAST_USED)
        # A connection never checked in is new: nothing to ask.
        if last is None or time.monotonic() - last < ALIVE_WITHOUT_PING_SECONDS:
            return
        try:
            dbapi_conn.ping()
        except Exception as err:  # noqa: BLE001 - any failure: connect anew (the pool retries)
            raise exc.InvalidatePoolError(str(err)) from err


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def ping(session: AsyncSession) -> None:
    """A round trip to the database; raises when it does not answer."""
    await session.execute(text("SELECT 1"))
