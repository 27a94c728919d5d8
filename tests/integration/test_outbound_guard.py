"""The outbound guard as users meet it: a ComfyUI backend is never reachable through a webhook or an
image URL, whatever GATEWAY_OUTBOUND_ALLOWLIST covers; URLs with odd Unicode hosts are 422, never 500."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select

from app.db.models import Upload
from comfy_emulator import Emulator, EmulatorConfig
from tests.integration.conftest import Gateway

BLUR = {"template": "blur", "params": {"width": 32, "height": 32, "blur_radius": 1}}


def img2img(image: str) -> dict[str, Any]:
    return {"template": "img2img", "params": {"image": image, "prompt": "a lighthouse", "steps": 2}}


async def upload_count(gw: Gateway) -> int:
    async with gw.state.sessionmaker() as session:
        return (await session.execute(select(func.count()).select_from(Upload))).scalar_one()


@pytest.fixture
async def second_emulator() -> AsyncIterator[Emulator]:
    emu = Emulator(EmulatorConfig(step_seconds=0.01))
    await emu.start(host="127.0.0.1", port=0)
    yield emu
    await emu.stop()


async def test_the_allowlist_never_opens_a_backend_to_image_urls_or_webhooks(
    emulator, make_settings, gateway_factory
) -> None:  # noqa: ANN001
    # The allow-list covers the backend's address, as an operator with receivers on the same host would set it.
    gw = await gateway_factory(
        make_settings(comfyui_urls=[emulator.base_url], outbound_allowlist=["127.0.0.0/8"])
    )
    await gw.wait_ready()
    _, alice = await gw.create_user("alice")
    _, mallory = await gw.create_user("mallory")
    job = (await gw.generate(BLUR, alice)).json()
    done = await gw.wait(job["id"], headers=alice)
    assert done["status"] == "succeeded", done
    [output] = [p.name for p in emulator.output_dir.rglob("*.png")]
    port = emulator.base_url.rsplit(":", 1)[1]

    before = await upload_count(gw)
    # Alice's output, asked for as Mallory's image input, by every spelling of the backend's address.
    for base in (
        emulator.base_url,
        f"http://localhost:{port}",
        f"http://[::ffff:127.0.0.1]:{port}",
        f"http://127.0.0.2:{port}",
    ):
        resp = await gw.generate(img2img(f"{base}/view?filename={output}&type=output"), mallory)
        assert resp.status_code == 422, (base, resp.text)
        assert resp.json()["errors"][0]["param"] == "image", resp.text
        if "localhost" in base:  # what a name resolves to is not told
            assert "127.0.0.1" not in resp.json()["errors"][0]["message"], resp.text
    assert await upload_count(gw) == before

    # A webhook to the backend's /interrupt (which stops whatever ComfyUI runs, for every user).
    for base in (emulator.base_url, f"http://localhost:{port}"):
        resp = await gw.generate({**BLUR, "webhook": {"url": f"{base}/interrupt"}}, mallory)
        assert resp.status_code == 422, (base, resp.text)
        assert [e["field"] for e in resp.json()["errors"]] == ["webhook.url"], resp.text
    assert emulator.interrupts == []


async def test_a_backend_added_after_a_webhook_was_accepted_is_not_reached(
    second_emulator: Emulator,
    make_settings,
    gateway_factory,  # noqa: ANN001
) -> None:
    gw = await gateway_factory(
        make_settings(
            comfyui_urls=["http://127.0.0.1:9"],
            run_dispatcher=False,
            outbound_allowlist=["127.0.0.1"],
            webhook_poll_seconds=0.05,
            webhook_retry_schedule=[0.1],
            webhook_max_attempts=2,
        )
    )
    _, user = await gw.create_user("app", limits={"rate_per_minute": 100_000})
    url = f"{second_emulator.base_url}/interrupt"
    created = await gw.generate({**BLUR, "webhook": {"url": url, "events": ["job.canceled"]}}, user)
    assert created.status_code == 202, created.text  # not a backend yet
    added = await gw.http.post("/v1/admin/backends", json={"url": second_emulator.base_url}, headers=gw.admin)
    assert added.status_code == 201, added.text
    job_id = created.json()["id"]
    assert (await gw.http.post(f"/v1/jobs/{job_id}/cancel", headers=user)).status_code == 200

    deadline = time.monotonic() + 20
    while True:
        [delivery] = (await gw.http.get(f"/v1/jobs/{job_id}/webhook-deliveries", headers=user)).json()[
            "items"
        ]
        if delivery["status"] != "pending":
            break
        assert time.monotonic() < deadline, delivery
        await asyncio.sleep(0.05)
    assert delivery["status"] == "failed", delivery
    assert [a["error"] for a in delivery["attempts"]] == ["refused_by_guard"] * 2
    assert second_emulator.interrupts == []


@pytest.mark.parametrize("host", ["１２７.０.０.１", "a\ud800b.example", "ｅｘａｍｐｌｅ.com"])
async def test_image_urls_with_odd_unicode_hosts_are_422_naming_the_param(idle_gateway, host: str) -> None:  # noqa: ANN001
    gw = await idle_gateway(outbound_allowlist=["0.0.0.0/0"])
    # As JSON escapes (a lone surrogate cannot be encoded otherwise), which the server decodes.
    body = json.dumps(img2img(f"http://{host}/x.png")).encode()
    resp = await gw.http.post(
        "/v1/generate", content=body, headers={**gw.admin, "content-type": "application/json"}
    )
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    # Named as a param by the guard, or as the field `params.image` by the edge's text check (a
    # lone surrogate never reaches the guard).
    error = resp.json()["errors"][0]
    assert error.get("param") == "image" or error.get("field") == "params.image", resp.text
    assert await upload_count(gw) == 0


async def test_an_image_url_that_fails_says_the_same_however_its_connection_failed(idle_gateway) -> None:  # noqa: ANN001
    """A closed port, a port that never answers and one that resets all read alike: otherwise a
    caller could map which ports answer on the hosts the allow-list lets it name."""
    gw = await idle_gateway(outbound_allowlist=["127.0.0.1"], url_fetch_timeout_seconds=1)
    _, alice = await gw.create_user("alice")

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        writer.close()

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    servers = [await asyncio.start_server(handler, "127.0.0.1", 0) for handler in (silent, reset)]
    closed = await asyncio.start_server(silent, "127.0.0.1", 0)
    closed_port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()
    try:
        ports = [s.sockets[0].getsockname()[1] for s in servers] + [closed_port]
        details = []
        for port in ports:
            resp = await gw.generate(img2img(f"http://127.0.0.1:{port}/x.png"), alice)
            assert resp.status_code == 422, resp.text
            details.append(resp.json()["errors"][0]["message"])
    finally:
        for server in servers:
            server.close()
    assert len(set(details)) == 1, details
    assert await upload_count(gw) == 0
