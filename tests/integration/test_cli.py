"""The admin commands of `comfy-gateway`, against a real database."""

from __future__ import annotations

import asyncio
import re

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.config import Settings, get_settings
from app.db.engine import create_engine, create_sessionmaker
from app.domain.users import authenticate


@pytest.fixture
def run(db_url: str, monkeypatch):  # noqa: ANN001, ANN201
    monkeypatch.setenv("GATEWAY_DATABASE_URL", db_url)
    get_settings.cache_clear()
    runner = CliRunner()
    yield lambda *args: runner.invoke(cli, list(args))
    get_settings.cache_clear()


def key_works(db_url: str, key: str) -> bool:
    async def check() -> bool:
        engine = create_engine(db_url)
        try:
            async with create_sessionmaker(engine)() as session:
                await authenticate(session, key, Settings(_env_file=None))
                return True
        except Exception:  # noqa: BLE001 - Unauthorized
            return False
        finally:
            await engine.dispose()

    return asyncio.run(check())


def test_create_list_disable_and_revoke(run, db_url: str) -> None:  # noqa: ANN001
    made = run(
        "create-user",
        "render-farm",
        "--with-key",
        "--limit",
        "max_queued=10",
        "--limit",
        "allow_raw_workflows=true",
    )
    assert made.exit_code == 0, made.output
    user_id = re.search(r"user id: (\S+)", made.output).group(1)
    key = re.search(r"api key: (cgw_\S+)", made.output).group(1)
    key_id = re.search(r"key id (\S+);", made.output).group(1)
    listed = run("list-users")
    assert (
        user_id in listed.output
        and '"max_queued":10' in listed.output
        and '"allow_raw_workflows":true' in listed.output
    )
    assert key_works(db_url, key)

    bad = run("create-user", "x", "--limit", "max_queued=0")
    assert bad.exit_code != 0 and "max_queued" in bad.output
    assert run("create-user", "x", "--limit", "gpus=2").exit_code != 0
    assert len(run("list-users").output.strip().splitlines()) == 1  # nothing was created

    assert run("revoke-key", key_id).exit_code == 0
    assert not key_works(db_url, key)
    assert run("revoke-key", "no-such-key").exit_code == 1

    second = run("create-key", user_id)
    assert second.exit_code == 0
    new_key = second.output.split()[0]
    assert key_works(db_url, new_key)
    assert run("disable-user", user_id).exit_code == 0
    assert not key_works(db_url, new_key) and "disabled" in run("list-users").output
    assert run("disable-user", user_id, "--enable").exit_code == 0
    assert key_works(db_url, new_key)


def test_add_and_list_backends(run) -> None:  # noqa: ANN001
    assert run("list-backends").output.strip() == ""
    added = run("add-backend", "http://10.0.0.5:8188/")
    assert added.exit_code == 0, added.output
    backend_id = re.search(r"backend id: (\S+)", added.output).group(1)
    assert run("list-backends").output.split() == [
        backend_id,
        "http://10.0.0.5:8188",
        "active",
        "admin",
        "jobs:",
        "0",
    ]
    duplicate = run("add-backend", "http://10.0.0.5:8188")
    assert duplicate.exit_code == 1 and "registered already" in duplicate.output
    bad = run("add-backend", "ftp://10.0.0.5")
    assert bad.exit_code == 1 and "http" in bad.output
    assert len(run("list-backends").output.strip().splitlines()) == 1
