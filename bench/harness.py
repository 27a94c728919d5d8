"""What every benchmark needs: ports, the emulator and the gateway as processes of their own, and
readings of a process's CPU time and memory from /proc (figures that do not depend on the load)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

import httpx

ADMIN_KEY = "cgw_bench_" + uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while True:
            with suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer")
            await asyncio.sleep(0.1)


def gateway_env(
    tmp: Path, comfyui_urls: Iterable[str], database_url: str | None = None, **settings: object
) -> dict[str, str]:
    """The environment of a gateway process: a fresh SQLite file under `tmp` unless `database_url`,
    the bench's admin key, and `settings` as GATEWAY_<NAME> variables."""
    env = {
        **os.environ,
        "GATEWAY_DATABASE_URL": database_url or f"sqlite+aiosqlite:///{tmp}/bench.db",
        "GATEWAY_STORAGE_DIR": str(tmp / "outputs"),
        "GATEWAY_COMFYUI_URLS": ",".join(comfyui_urls),
        "GATEWAY_ADMIN_API_KEY": ADMIN_KEY,
        "GATEWAY_LOG_LEVEL": "warning",
    }
    env.update({f"GATEWAY_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def start_emulator(port: int, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "comfy_emulator", "--host", "127.0.0.1", "--port", str(port)], env=env
    )


def start_gateway(port: int, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], env=env)


def stop(procs: Iterable[subprocess.Popen]) -> None:
    procs = list(procs)
    for p in procs:
        p.terminate()
    for p in procs:
        with suppress(subprocess.TimeoutExpired):
            p.wait(10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def pg_admin(url: str, sql: str) -> None:
    """Run one statement on the PostgreSQL server of `url` (its database, outside a transaction)."""
    import asyncpg
    from sqlalchemy.engine import make_url

    conn = await asyncpg.connect(
        make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def fresh_database(server_url: str | None) -> str | None:
    """A new, empty database on the PostgreSQL server of `server_url` (None, SQLite: None). A run
    on a database that earlier runs filled measures their leftovers too (queued jobs to dispatch,
    users' counter rows)."""
    if server_url is None:
        return None
    from sqlalchemy.engine import make_url

    name = f"gw_bench_{uuid.uuid4().hex[:8]}"
    await pg_admin(server_url, f'CREATE DATABASE "{name}"')
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


async def drop_database(server_url: str | None, url: str | None) -> None:
    """Drop a database `fresh_database` made (connected to the server's own database)."""
    if server_url is not None and url is not None:
        from sqlalchemy.engine import make_url

        name = make_url(url).database
        await pg_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
