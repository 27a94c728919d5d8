"""API keys' callers and template documents are cached in process (app/domain/read_cache.py): a
revoke, a disable, new limits or a new template still take effect at once on the replica that made
them, on another replica as soon as the announcement arrives (PostgreSQL), and within
GATEWAY_AUTH_CACHE_SECONDS for a change nothing announced (a CLI command on SQLite)."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from app.db.engine import create_engine, create_sessionmaker
from app.domain import users
from tests.integration.conftest import Gateway

BLUR = {"template": "blur", "params": {"width": 64, "height": 64}}
PG_ONLY = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def tiny(width: int) -> dict:
    """A template whose default width tells which version of it a job was made from."""
    return {
        "workflow": {
            "1": {
                "class_type": "EmptyImage",
                "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
            },
            "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "tiny"}},
        },
        "params": {"width": {"type": "integer", "default": width, "bind": ["1.inputs.width"]}},
        "outputs": ["9"],
    }


async def _width_of_a_new_job(gw: Gateway, key: dict[str, str]) -> int | None:
    resp = await gw.generate({"template": "tiny", "params": {}}, headers=key)
    return resp.json()["params"]["width"] if resp.status_code == 202 else None


async def _until_status(
    http: httpx.AsyncClient, headers: dict[str, str], status: int, timeout: float
) -> float:
    """Seconds until GET /v1/me answers `status` (fails after `timeout`)."""
    start = time.monotonic()
    while True:
        resp = await http.get("/v1/me", headers=headers)
        if resp.status_code == status:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"still {resp.status_code} after {timeout} s"
        await asyncio.sleep(0.02)


async def test_new_limits_apply_from_the_next_request(idle_gateway) -> None:  # noqa: ANN001
    gw: Gateway = await idle_gateway(auth_cache_seconds=300)
    user_id, key = await gw.create_user("limited", limits={"max_priority": 1})
    me = await gw.http.get("/v1/me", headers=key)
    assert me.status_code == 200 and me.json()["limits"]["max_priority"] == 1
    changed = await gw.http.patch(
        f"/v1/admin/users/{user_id}", json={"limits": {"max_priority": 7}}, headers=gw.admin
    )
    assert changed.status_code == 200, changed.text
    assert (await gw.http.get("/v1/me", headers=key)).json()["limits"]["max_priority"] == 7
    job = await gw.generate({**BLUR, "priority": 9}, headers=key)
    assert job.status_code == 202 and job.json()["priority"] == 7


@PG_ONLY
async def test_another_replica_refuses_a_revoked_key_or_disabled_user_once_announced(
    make_settings,  # noqa: ANN001
    gateway_factory,  # noqa: ANN001
) -> None:
    a, b = await _two_replicas(make_settings, gateway_factory)
    user_id, first = await a.create_user("two-replicas")
    second = await a.http.post(f"/v1/admin/users/{user_id}/keys", headers=a.admin)
    key_id, key = second.json()["id"], {"Authorization": f"Bearer {second.json()['key']}"}
    for headers in (first, key):
        assert (await b.http.get("/v1/me", headers=headers)).status_code == 200  # now cached on B
    assert len(b.state.principals) == 2

    assert (
        await a.http.delete(f"/v1/admin/users/{user_id}/keys/{key_id}", headers=a.admin)
    ).status_code == 204
    assert await _until_status(b.http, key, 401, timeout=5) < 2
    assert (await b.http.post("/v1/generate", json=BLUR, headers=key)).status_code == 401
    assert (await b.http.get("/v1/me", headers=first)).status_code == 200  # the user's other key

    disabled = await a.http.patch(f"/v1/admin/users/{user_id}", json={"disabled": True}, headers=a.admin)
    assert disabled.status_code == 200
    assert await _until_status(b.http, first, 401, timeout=5) < 2
    enabled = await a.http.patch(f"/v1/admin/users/{user_id}", json={"disabled": False}, headers=a.admin)
    assert enabled.status_code == 200
    assert await _until_status(b.http, first, 200, timeout=5) < 2


@SQLITE_ONLY
async def test_an_unannounced_change_is_seen_within_the_time_to_live(idle_gateway, db_url: str) -> None:  # noqa: ANN001
    ttl = 1.0
    gw: Gateway = await idle_gateway(auth_cache_seconds=ttl)
    user_id, key = await gw.create_user("cli-revoked")
    assert (await gw.http.get("/v1/me", headers=key)).status_code == 200
    # As `comfy-gateway revoke-key` does from another process: nothing tells the gateway.
    engine = create_engine(db_url)
    try:
        async with create_sessionmaker(engine)() as session:
            await users.update_user(session, user_id, disabled=True)
            await session.commit()
    finally:
        await engine.dispose()
    changed_at = time.monotonic()
    await _until_status(gw.http, key, 401, timeout=ttl + 5)
    assert time.monotonic() - changed_at < ttl + 1.5


async def test_without_a_cache_every_request_reads_the_key(idle_gateway) -> None:  # noqa: ANN001
    gw: Gateway = await idle_gateway(auth_cache_seconds=0)
    _, key = await gw.create_user("uncached")
    assert (await gw.http.get("/v1/me", headers=key)).status_code == 200
    assert len(gw.state.principals) == 0


async def test_a_replaced_or_deleted_template_applies_from_the_next_submit(idle_gateway) -> None:  # noqa: ANN001
    gw: Gateway = await idle_gateway(auth_cache_seconds=300)
    _, key = await gw.create_user("templated")
    assert (await gw.http.put("/v1/templates/tiny", json=tiny(8), headers=gw.admin)).status_code == 201
    assert await _width_of_a_new_job(gw, key) == 8  # now cached
    assert (await gw.http.put("/v1/templates/tiny", json=tiny(16), headers=gw.admin)).status_code == 200
    assert await _width_of_a_new_job(gw, key) == 16
    assert (await gw.http.delete("/v1/templates/tiny", headers=gw.admin)).status_code == 204
    gone = await gw.generate({"template": "tiny", "params": {}}, headers=key)
    assert gone.status_code == 422 and "tiny" in gone.text


@PG_ONLY
async def test_another_replica_submits_with_a_replaced_template_once_announced(
    make_settings,  # noqa: ANN001
    gateway_factory,  # noqa: ANN001
) -> None:
    a, b = await _two_replicas(make_settings, gateway_factory)
    _, key = await a.create_user("templated")
    assert (await a.http.put("/v1/templates/tiny", json=tiny(8), headers=a.admin)).status_code == 201
    assert await _width_of_a_new_job(b, key) == 8  # now cached on B
    assert (await a.http.put("/v1/templates/tiny", json=tiny(16), headers=a.admin)).status_code == 200
    start = time.monotonic()
    while (width := await _width_of_a_new_job(b, key)) != 16:
        assert width == 8 and time.monotonic() - start < 2, width
        await asyncio.sleep(0.02)


async def _two_replicas(make_settings, gateway_factory) -> tuple[Gateway, Gateway]:  # noqa: ANN001
    """Two API replicas on one database, B listening for announcements. A long time to live:
    only an announcement can make B forget within a test."""
    settings = make_settings(
        comfyui_urls=["http://127.0.0.1:9"], run_dispatcher=False, auth_cache_seconds=300
    )
    a: Gateway = await gateway_factory(settings)
    b: Gateway = await gateway_factory(settings)
    await asyncio.wait_for(b.state.event_relay.listening.wait(), 10)
    return a, b
