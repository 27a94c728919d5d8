"""Pooled PostgreSQL connections that the server closed (a restart, an admin's kill): the pool
pings a connection that sat idle before handing it out, and trusts one used within the last half
second (app/db/engine.py). A closed connection costs at most the one statement that met it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.engine import ALIVE_WITHOUT_PING_SECONDS, create_engine, create_sessionmaker
from tests.conftest import PG_ADMIN_URL

pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)

PID = text("SELECT pg_backend_pid()")


async def _kill(pid: int) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await conn.close()


@pytest.fixture
async def killed(db_url: str) -> AsyncIterator[tuple[async_sessionmaker[AsyncSession], int]]:
    """A pool of one connection, used once, whose connection the server then closed; and the
    server process id it had."""
    engine = create_engine(db_url, pool_size=1)
    sessions = create_sessionmaker(engine)
    async with sessions() as session:
        first = (await session.execute(PID)).scalar_one()
    await _kill(first)
    yield sessions, first
    await engine.dispose()


async def test_a_connection_closed_while_idle_is_replaced_before_anyone_uses_it(killed) -> None:  # noqa: ANN001
    sessions, first = killed
    await asyncio.sleep(ALIVE_WITHOUT_PING_SECONDS + 0.3)
    async with sessions() as session:
        second = (await session.execute(PID)).scalar_one()
    assert second != first


async def test_a_connection_closed_just_after_use_fails_one_statement_at_most(killed) -> None:  # noqa: ANN001
    sessions, first = killed
    failures = 0
    for _ in range(2):
        try:
            async with sessions() as session:
                second = (await session.execute(PID)).scalar_one()
            break
        except DBAPIError as err:
            assert err.connection_invalidated
            failures += 1
    assert failures <= 1 and second != first


BLUR = {"template": "blur", "params": {"width": 16, "height": 16}}


async def test_the_dispatcher_keeps_its_connections_through_a_burst_of_jobs(gateway) -> None:  # noqa: ANN001
    """Its work needs several connections at once (a round, a transition per prompt in flight):
    each one it opened and then closed cost PostgreSQL a new server process, and the gateway a
    handshake, type introspection and its statements prepared again."""
    engine = gateway.dispatcher._sessionmaker.kw["bind"]
    opened = 0

    def count(_dbapi_conn: object, _record: object) -> None:
        nonlocal opened
        opened += 1

    event.listen(engine.sync_engine, "connect", count)
    try:
        ids = []
        for _ in range(3):
            # Bursts: many jobs end, start and are claimed at the same moments.
            sent = await asyncio.gather(*(gateway.generate(BLUR) for _ in range(20)))
            ids += [resp.json()["id"] for resp in sent]
            for job_id in ids[-20:]:
                assert (await gateway.wait(job_id))["status"] == "succeeded"
    finally:
        event.remove(engine.sync_engine, "connect", count)
    assert opened <= engine.pool.size()
