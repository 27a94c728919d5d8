"""Live connections (SSE streams, /v1/ws) against hostile or greedy clients: odd keys, too many streams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest
import websockets

from tests.integration.conftest import ADMIN_KEY, Gateway
from tests.integration.test_live_events import assert_closed_for_policy, ws_collect, ws_url


async def test_ws_first_frame_key_with_a_lone_surrogate_is_refused_like_a_bad_key(idle_gateway) -> None:  # noqa: ANN001
    gateway: Gateway = await idle_gateway()
    # JSON may escape a lone surrogate, which no UTF-8 string can hold: as a key it is merely wrong.
    for first in ('{"api_key": "cgw_\\ud800"}', '"\\udfff"'):
        async with websockets.connect(ws_url(gateway)) as ws:
            await ws.send(first)
            error = json.loads(await ws.recv())
            assert error["event"] == "error" and error["data"]["status"] == 401
            await assert_closed_for_policy(ws)


async def test_live_connections_per_user_are_capped_sse_429_ws_closed_and_freed_when_one_ends(
    idle_gateway,
) -> None:  # noqa: ANN001
    gateway: Gateway = await idle_gateway(max_live_streams_per_user=2)
    _, alice = await gateway.create_user("alice")
    _, bob = await gateway.create_user("bob")
    body = {"template": "txt2img", "params": {"prompt": "a lighthouse"}}
    job = (await gateway.generate(body, alice)).json()["id"]
    bobs_job = (await gateway.generate(body, bob)).json()["id"]
    key = alice["Authorization"].split()[1]
    async with contextlib.AsyncExitStack() as stack:
        # The job stays queued (no dispatcher): each stream stays open.
        first = await stack.enter_async_context(
            gateway.http.stream("GET", f"/v1/jobs/{job}/events", headers=alice)
        )
        assert first.status_code == 200
        ws = await stack.enter_async_context(websockets.connect(ws_url(gateway, f"?api_key={key}")))
        assert json.loads(await ws.recv())["event"] == "subscribed"
        # A third live connection of alice's, by SSE or WebSocket, is refused...
        over = await gateway.http.get(f"/v1/jobs/{job}/events", headers=alice)
        assert over.status_code == 429 and over.headers["content-type"].startswith("application/problem+json")
        assert int(over.headers["Retry-After"]) >= 1 and over.json()["limit"] == "max_live_streams"
        async with websockets.connect(ws_url(gateway, f"?api_key={key}")) as refused:
            error = json.loads(await refused.recv())
            assert error["event"] == "error" and error["data"]["status"] == 429
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(refused.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        # ...while bob's are not counted against her, nor the bootstrap admin's.
        async with gateway.http.stream("GET", f"/v1/jobs/{bobs_job}/events", headers=bob) as bobs:
            assert bobs.status_code == 200
        admins_job = (await gateway.generate(body)).json()["id"]
        admins = [
            await stack.enter_async_context(
                gateway.http.stream("GET", f"/v1/jobs/{admins_job}/events", headers=gateway.admin)
            )
            for _ in range(3)
        ]
        assert [r.status_code for r in admins] == [200, 200, 200]
        await ws.close()
        await first.aclose()
        # Both slots are given back once the server sees the stream and the socket closed.
        deadline = time.monotonic() + 20
        while True:
            async with contextlib.AsyncExitStack() as two:
                again = [
                    await two.enter_async_context(
                        gateway.http.stream("GET", f"/v1/jobs/{job}/events", headers=alice)
                    )
                    for _ in range(2)
                ]
                if [r.status_code for r in again] == [200, 200]:
                    break
            assert time.monotonic() < deadline, "a closed connection's slot was never given back"
            await asyncio.sleep(0.1)


async def test_an_admin_follows_every_users_jobs_with_all_and_no_one_else_may(gateway: Gateway) -> None:
    _, bob = await gateway.create_user("bob")
    _, carol = await gateway.create_user("carol", is_admin=True)
    carol_key = carol["Authorization"].split()[1]
    # A user who is not an admin asking for everyone's jobs is refused, not quietly narrowed.
    async with websockets.connect(ws_url(gateway, "?all=true")) as ws:
        await ws.send(bob["Authorization"].split()[1])
        error = json.loads(await ws.recv())
        assert error["event"] == "error" and error["data"]["status"] == 403
        await assert_closed_for_policy(ws)
    for key in (ADMIN_KEY, carol_key):
        async with websockets.connect(ws_url(gateway, "?all=true")) as ws:
            await ws.send(key)
            assert json.loads(await ws.recv())["event"] == "subscribed"
            job = (
                await gateway.generate({"template": "blur", "params": {"width": 32, "height": 32}}, bob)
            ).json()
            frames = await ws_collect(ws, {job["id"]})
        assert {f["event"] for f in frames} >= {"status", "output"}
        assert frames[-1]["data"]["status"] == "succeeded"
