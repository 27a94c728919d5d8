"""The MCP server at /mcp, driven by the `mcp` SDK's own client against the real app and the emulator."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2
import mcp_types as types
import pytest
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from PIL import Image

from tests.integration.conftest import Gateway


@asynccontextmanager
async def mcp_client(gw: Gateway, headers: dict[str, str], **options: object) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
        async with Client(
            streamable_http_client(gw.base_url + "/mcp", http_client=http), **options
        ) as client:
            yield client


def text_of(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


TXT2IMG = {"prompt": "a lighthouse", "steps": 4, "width": 64, "height": 72}


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_tools_are_the_templates_and_a_call_returns_progress_and_the_image(
    gateway: Gateway, mode: str
) -> None:
    _, alice = await gateway.create_user("alice")
    async with mcp_client(gateway, alice, mode=mode) as mcp:
        tools = {t.name: t for t in (await mcp.list_tools()).tools}
        assert {"list_templates", "get_job", "cancel_job", "txt2img", "img2img", "blur", "resize"} <= set(
            tools
        )
        schema = tools["txt2img"].input_schema
        assert schema["required"] == ["prompt"] and schema["properties"]["width"]["maximum"] == 2048
        assert "upload id" in tools["img2img"].input_schema["properties"]["image"]["description"]

        progress: list[tuple[float, float | None, str | None]] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append((value, total, message))

        result = await mcp.call_tool("txt2img", TXT2IMG, progress_callback=on_progress)
    assert not result.is_error, text_of(result)
    images = [c for c in result.content if isinstance(c, types.ImageContent)]
    assert len(images) == 1 and images[0].mime_type == "image/png"
    assert Image.open(io.BytesIO(base64.b64decode(images[0].data))).size == (64, 72)
    job = result.structured_content
    assert job["status"] == "succeeded" and job["params"]["prompt"] == "a lighthouse"
    # The sampler's steps arrived as progress notifications, each one further than the last.
    assert any(message and "4/4" in message for _, _, message in progress), progress
    values = [value for value, _, _ in progress]
    assert values == sorted(set(values))
    # An ordinary job of the caller's.
    assert (await gateway.job(job["id"], alice))["status"] == "succeeded"


async def test_a_second_user_sees_only_its_own_jobs(gateway: Gateway) -> None:
    _, alice = await gateway.create_user("alice")
    _, bob = await gateway.create_user("bob")
    async with mcp_client(gateway, alice) as mcp:
        made = await mcp.call_tool("blur", {"width": 16, "height": 16})
        job_id = made.structured_content["id"]
        mine = await mcp.call_tool("get_job", {"job_id": job_id})
        assert not mine.is_error and mine.structured_content["status"] == "succeeded"
        assert any(isinstance(c, types.ImageContent) for c in mine.content)
    async with mcp_client(gateway, bob) as mcp:
        for tool in ("get_job", "cancel_job"):
            theirs = await mcp.call_tool(tool, {"job_id": job_id})
            assert theirs.is_error and "no job" in text_of(theirs), text_of(theirs)
            assert theirs.structured_content is None
    assert (await gateway.job(job_id, alice))["status"] == "succeeded"


async def test_bad_keys_are_refused_and_bad_params_named(gateway: Gateway) -> None:
    resp = await gateway.http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
    resp = await gateway.http.post(
        "/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"Authorization": "Bearer cgw_nope"},
    )
    assert resp.status_code == 401

    _, alice = await gateway.create_user("alice")
    async with mcp_client(gateway, alice) as mcp:
        bad = await mcp.call_tool("txt2img", {"prompt": "x", "width": 5000})
        assert bad.is_error
        assert json.loads(text_of(bad))["errors"][0]["param"] == "width"
        unknown = await mcp.call_tool("no_such_template", {})
        assert unknown.is_error and "no tool" in text_of(unknown)
    jobs = await gateway.http.get("/v1/jobs", headers=alice)
    assert jobs.json()["items"] == []


async def test_a_call_that_outlives_its_bound_returns_the_job_to_follow(
    emulator, make_settings, gateway_factory
) -> None:  # noqa: ANN001
    gw = await gateway_factory(
        make_settings(comfyui_urls=[emulator.base_url], mcp_wait_seconds=0.5, mcp_inline_image_bytes=0)
    )
    await gw.wait_ready()
    _, alice = await gw.create_user("alice")
    async with mcp_client(gw, alice) as mcp:
        # Larger than GATEWAY_MCP_INLINE_IMAGE_BYTES: a link to the image (signed: no key needed).
        blur = await mcp.call_tool("blur", {"width": 16, "height": 16})
        links = [c for c in blur.content if isinstance(c, types.ResourceLink)]
        assert len(links) == 1 and not any(isinstance(c, types.ImageContent) for c in blur.content)
        fetched = await gw.http.get(str(links[0].uri))
        assert fetched.status_code == 200 and len(fetched.content) == links[0].size

        emulator.config.step_seconds = 0.5
        result = await mcp.call_tool("txt2img", {**TXT2IMG, "steps": 40})
        assert not result.is_error
        job_id = result.structured_content["id"]
        assert result.structured_content["status"] in ("queued", "running")
        assert "get_job" in text_of(result) and job_id in text_of(result)
        canceled = await mcp.call_tool("cancel_job", {"job_id": job_id})
        assert canceled.structured_content["status"] == "canceled"
    assert (await gw.job(job_id, alice))["status"] == "canceled"


async def test_a_session_answers_only_the_user_that_opened_it(gateway: Gateway) -> None:
    _, alice = await gateway.create_user("alice")
    _, bob = await gateway.create_user("bob")
    accept = {"Accept": "application/json, text/event-stream"}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    opened = await gateway.http.post("/mcp", json=init, headers={**alice, **accept})
    assert opened.status_code == 200, opened.text
    session = {
        "Mcp-Session-Id": opened.headers["mcp-session-id"],
        "Mcp-Protocol-Version": "2025-06-18",
        **accept,
    }
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    assert (await gateway.http.post("/mcp", json=listing, headers={**bob, **session})).status_code == 404
    assert (await gateway.http.post("/mcp", json=listing, headers={**alice, **session})).status_code == 200


async def test_over_a_limit_a_call_is_an_error_naming_it_and_makes_no_job(idle_gateway) -> None:  # noqa: ANN001
    gw = await idle_gateway(mcp_wait_seconds=0.2)
    _, alice = await gw.create_user("alice", limits={"max_queued": 1})
    async with mcp_client(gw, alice) as mcp:
        first = await mcp.call_tool("blur", {})
        assert first.structured_content["status"] == "queued"
        second = await mcp.call_tool("blur", {})
        assert second.is_error and json.loads(text_of(second))["limit"] == "max_queued"
    jobs = (await gw.http.get("/v1/jobs", headers=alice)).json()["items"]
    assert [j["id"] for j in jobs] == [first.structured_content["id"]]


async def test_a_disabled_user_is_refused_from_its_next_request(gateway: Gateway) -> None:
    user_id, alice = await gateway.create_user("alice")
    async with mcp_client(gateway, alice) as mcp:
        assert not (await mcp.call_tool("list_templates", {})).is_error
        resp = await gateway.http.patch(
            f"/v1/admin/users/{user_id}", json={"disabled": True}, headers=gateway.admin
        )
        assert resp.status_code == 200
        # The session stays open, but its requests are refused (401) from now on.
        with pytest.raises(MCPError):
            await mcp.call_tool("blur", {})
    assert (await gateway.http.get("/v1/admin/jobs", headers=gateway.admin)).json()["items"] == []
