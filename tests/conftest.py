"""Shared fixtures: a fresh database per test (SQLite, and PostgreSQL when it answers), built by
the real migrations; the ComfyUI emulator and the gateway on real loopback ports."""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from pathlib import Path

import pytest

from app.db.migrate import upgrade

PG_ADMIN_URL = os.environ.get("GATEWAY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
_PG_TEMPLATE = f"gw_template_{os.getpid()}"


def _pg_reachable() -> bool:
    host, port = "127.0.0.1", 5432
    try:
        from sqlalchemy.engine import make_url

        url = make_url(PG_ADMIN_URL)
        host, port = url.host or host, url.port or port
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


PG_AVAILABLE = _pg_reachable()


def _pg_exec(sql: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def _pg_url(database: str) -> str:
    from sqlalchemy.engine import make_url

    return (
        make_url(PG_ADMIN_URL)
        .set(drivername="postgresql+asyncpg", database=database)
        .render_as_string(hide_password=False)
    )


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file migrated once; each test gets a copy (the migrations run for real)."""
    path = tmp_path_factory.mktemp("db") / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_template() -> str:
    if not PG_AVAILABLE:
        message = f"PostgreSQL is not reachable at {PG_ADMIN_URL}: PostgreSQL variants skipped"
        if os.environ.get("GATEWAY_TEST_REQUIRE_PG"):
            pytest.fail(message.replace("skipped", "required (GATEWAY_TEST_REQUIRE_PG is set)"))
        pytest.skip(message)
    _pg_exec(f'DROP DATABASE IF EXISTS "{_PG_TEMPLATE}"')
    _pg_exec(f'CREATE DATABASE "{_PG_TEMPLATE}"')
    upgrade(_pg_url(_PG_TEMPLATE))
    yield _PG_TEMPLATE
    _pg_exec(f'DROP DATABASE IF EXISTS "{_PG_TEMPLATE}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, migrated database for one test."""
    if request.param == "sqlite":
        path = tmp_path / "gateway.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite+aiosqlite:///{path}"
    template = request.getfixturevalue("pg_template")
    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    _pg_exec(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    request.addfinalizer(lambda: _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return _pg_url(name)
