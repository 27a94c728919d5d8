"""ComfyWebSocket against a local aiohttp WebSocket server that behaves like ComfyUI's `/ws`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from app.comfy import (
    DEFAULT_FEATURE_FLAGS,
    ComfyWebSocket,
    Connected,
    Disconnected,
    FeatureFlags,
    Preview,
    ProgressText,
    Status,
    Unknown,
    parse_text,
    websocket_url,
)

from .helpers import load
from .test_messages import build_binary

FAST = dict(backoff_initial=0.02, backoff_max=0.1, ping_interval=0.2, ping_timeout=0.2, close_timeout=0.2)
FLAGS_SCENARIO = load("scenario_previews_feature_flags_client.json")
SERVER_FLAGS = FLAGS_SCENARIO["ws_messages"][1]["json"]


def frame_bytes(frame: dict[str, Any]) -> str | bytes:
    return json.dumps(frame["json"]) if frame["frame"] == "text" else build_binary(frame)


class FakeWs:
    """A `/ws` endpoint. Each connection follows the next entry of `plan` (then "normal"):

    - normal: send `status` with the sid (as ComfyUI does), answer a `feature_flags` first frame
      with the server's flags, send `frames`, then read until the client goes away;
    - close: like normal, then close the socket right after the frames;
    - silent: like normal but the frames are ignored: the server stays quiet (answers pings);
    - stall: send `status`, then never read again, so pings go unanswered.
    """

    def __init__(self, plan: list[dict[str, Any]] | None = None):
        self.plan = list(plan or [])
        self.connections: list[dict[str, Any]] = []
        self.stop = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_get("/ws", self.handler)

    async def handler(self, request: web.Request) -> web.WebSocketResponse:
        step = self.plan.pop(0) if self.plan else {}
        mode, frames = step.get("mode", "normal"), step.get("frames", [])
        conn: dict[str, Any] = {
            "client_id": request.query.get("clientId"),
            "received": [],
            "closed": False,
            "mode": mode,
        }
        self.connections.append(conn)
        ws = web.WebSocketResponse(autoping=mode != "stall", max_msg_size=0)
        await ws.prepare(request)
        sid = conn["client_id"] or "35eec4016d084c40af941ce7768ec365"
        await ws.send_json(
            {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": sid}}
        )
        try:
            if mode == "stall":
                await self.stop.wait()
                return ws
            with contextlib.suppress(asyncio.TimeoutError):
                first = await ws.receive(timeout=0.3)
                if first.type == WSMsgType.TEXT:
                    conn["received"].append(first.data)
                    if json.loads(first.data).get("type") == "feature_flags":
                        await ws.send_json(SERVER_FLAGS)
            if mode != "silent":
                for frame in frames:
                    if isinstance(frame, bytes):
                        await ws.send_bytes(frame)
                    else:
                        await ws.send_str(frame)
            if mode == "close":
                await ws.close()
                return ws
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    conn["received"].append(msg.data)
        finally:
            conn["closed"] = True
        return ws


@pytest.fixture
async def ws_server(serve: Any) -> AsyncIterator[Any]:
    made: list[FakeWs] = []

    async def make(plan: list[dict[str, Any]] | None = None, port: int = 0) -> tuple[FakeWs, str]:
        fake = FakeWs(plan)
        made.append(fake)
        server = await serve(fake.app, port)
        return fake, server.url

    yield make
    for fake in made:
        fake.stop.set()


async def take(events: AsyncIterator[Any], n: int, timeout: float = 5.0) -> list[Any]:
    return [await asyncio.wait_for(events.__anext__(), timeout) for _ in range(n)]


async def wait_for(predicate: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------------------------


async def test_receives_recorded_session_and_sends_feature_flags_first(ws_server: Any) -> None:
    recorded = FLAGS_SCENARIO["ws_messages"]
    fake, url = await ws_server([{"frames": [frame_bytes(f) for f in recorded[2:]]}])
    ws = ComfyWebSocket(url, FLAGS_SCENARIO["client_id"], **FAST)
    events = ws.events()
    try:
        connected, *messages = await take(events, 1 + len(recorded))
        assert connected == Connected(sid="harness-client-flags", attempt=1, is_reconnect=False)
        assert ws.sid == "harness-client-flags" and ws.connected
        assert messages[0] == Status(queue_remaining=0, sid="harness-client-flags")
        assert messages[1] == FeatureFlags(SERVER_FLAGS["data"])
        for frame, msg in zip(recorded, messages):
            if frame["frame"] == "text":
                assert msg == parse_text(json.dumps(frame["json"]))
            elif frame["decoded"]["event_type"] == 4:
                assert isinstance(msg, Preview) and msg.prompt_id == FLAGS_SCENARIO["prompt_id"]
            else:
                assert isinstance(msg, ProgressText) and msg.text == frame["decoded"]["text"]
        assert not any(isinstance(m, Unknown) for m in messages)
        # The first (and only) frame the client sent is the frontend's feature-flags frame.
        (conn,) = fake.connections
        assert conn["client_id"] == "harness-client-flags"
        sent_first = load("scenario_ws_handshake.json")["connections"][1]["sent_first"]
        assert [json.loads(r) for r in conn["received"]] == [sent_first]
        assert sent_first == {"type": "feature_flags", "data": DEFAULT_FEATURE_FLAGS}
    finally:
        await ws.close()
        await events.aclose()


async def test_no_feature_flags_when_disabled(ws_server: Any) -> None:
    fake, url = await ws_server()
    ws = ComfyWebSocket(url, "harness-client-a", send_feature_flags=False, **FAST)
    events = ws.events()
    connected, status = await take(events, 2)
    assert isinstance(connected, Connected) and status == Status(0, "harness-client-a")
    await asyncio.sleep(0.35)  # past the server's wait for a first frame
    await ws.close()
    await events.aclose()
    await wait_for(lambda: fake.connections[0]["closed"])
    assert fake.connections[0]["received"] == []


async def test_server_close_gives_disconnected_then_reconnects(ws_server: Any) -> None:
    fake, url = await ws_server([{"mode": "close"}, {"mode": "normal"}])
    ws = ComfyWebSocket(url, "harness-client-b", **FAST)
    events = ws.events()
    try:
        got = await take(events, 6)
        assert got[0] == Connected("harness-client-b", 1, False)
        assert got[1] == Status(0, "harness-client-b")
        assert got[2] == FeatureFlags(SERVER_FLAGS["data"])
        assert isinstance(got[3], Disconnected) and "server" in got[3].reason and "1000" in got[3].reason
        assert got[4] == Connected("harness-client-b", 1, True)
        assert got[5] == Status(0, "harness-client-b")
        assert len(fake.connections) == 2
        for conn in fake.connections:  # feature flags re-sent on every connection
            assert json.loads(conn["received"][0])["type"] == "feature_flags"
    finally:
        await ws.close()
        await events.aclose()


async def test_unanswered_pings_are_detected_and_reconnected(ws_server: Any) -> None:
    fake, url = await ws_server([{"mode": "stall"}, {"mode": "normal"}])
    ws = ComfyWebSocket(url, "harness-client-a", **FAST)
    events = ws.events()
    try:
        start = time.monotonic()
        connected, status = await take(events, 2)
        assert isinstance(connected, Connected) and isinstance(status, Status)
        disconnected = await asyncio.wait_for(events.__anext__(), 5)
        assert isinstance(disconnected, Disconnected), disconnected
        assert "ping" in disconnected.reason or "1011" in disconnected.reason
        assert time.monotonic() - start < 3
        again = await asyncio.wait_for(events.__anext__(), 5)
        assert again == Connected("harness-client-a", 1, True)
        assert fake.connections[1]["mode"] == "normal"
    finally:
        await ws.close()
        await events.aclose()


async def test_stall_timeout_reconnects_a_silent_connection(ws_server: Any) -> None:
    fake, url = await ws_server(
        [{"mode": "silent"}, {"mode": "normal", "frames": ['{"type":"x","data":{}}']}]
    )
    ws = ComfyWebSocket(
        url, "harness-client-a", stall_timeout=0.4, **{**FAST, "ping_interval": 10.0, "ping_timeout": 10.0}
    )
    events = ws.events()
    try:
        got = await take(events, 4)
        assert [type(e) for e in got] == [Connected, Status, FeatureFlags, Disconnected]
        assert got[3].reason.startswith("stalled")
        got = await take(events, 4)
        assert [type(e) for e in got] == [Connected, Status, FeatureFlags, Unknown]
        assert got[0].is_reconnect
        await wait_for(lambda: fake.connections[0]["closed"])
    finally:
        await ws.close()
        await events.aclose()


async def test_bad_frames_never_break_the_stream(ws_server: Any) -> None:
    garbage: list[str | bytes] = [
        "not json",
        "[]",
        '{"type":"progress","data":{}}',
        b"",
        b"\x00",
        b"\x00\x00\x00\x04junk",
        '{"type":"status","data":{"status":{"exec_info":{"queue_remaining":2}}}}',
    ]
    _, url = await ws_server([{"frames": garbage}])
    ws = ComfyWebSocket(url, "c", **FAST)
    events = ws.events()
    try:
        got = await take(events, 3 + len(garbage))
        assert all(isinstance(m, Unknown) for m in got[3:-1])
        assert got[-1] == Status(2, None)
        assert ws.connected
    finally:
        await ws.close()
        await events.aclose()


async def test_large_frames_are_accepted(ws_server: Any) -> None:
    big = b"\x00\x00\x00\x01\x00\x00\x00\x02" + b"\x89PNG" + bytes(5 * 1024 * 1024)
    _, url = await ws_server([{"frames": [big]}])
    ws = ComfyWebSocket(url, "c", **FAST)
    events = ws.events()
    try:
        *_, preview = await take(events, 4)
        assert isinstance(preview, Preview) and preview.image_type == "image/png"
        assert len(preview.image) == len(big) - 8
    finally:
        await ws.close()
        await events.aclose()


# ------------------------------------------------------------------------------------------------
# Stopping


async def consume(ws: ComfyWebSocket, seen: list[Any]) -> None:
    async for event in ws.events():
        seen.append(event)


async def test_close_stops_the_iterator_promptly_while_receiving(ws_server: Any) -> None:
    fake, url = await ws_server()
    ws = ComfyWebSocket(url, "c", **{**FAST, "ping_interval": 10.0})
    seen: list[Any] = []
    task = asyncio.create_task(consume(ws, seen))
    await wait_for(lambda: len(seen) >= 3)
    start = time.monotonic()
    await ws.close()
    await asyncio.wait_for(task, 4.0)
    # Well below the 10 s ping interval / 5 s backoff that close() must not wait out.
    assert time.monotonic() - start < 2.5
    assert not any(isinstance(e, Disconnected) for e in seen)
    await wait_for(lambda: fake.connections[0]["closed"])
    assert not ws.connected and ws.closed


async def test_close_stops_the_iterator_during_backoff(closed_port: int) -> None:
    ws = ComfyWebSocket(f"http://127.0.0.1:{closed_port}", "c", backoff_initial=5.0, backoff_max=5.0)
    seen: list[Any] = []
    task = asyncio.create_task(consume(ws, seen))
    await asyncio.sleep(0.2)  # the first connect has failed; now sleeping ~5 s
    start = time.monotonic()
    await ws.close()
    await asyncio.wait_for(task, 4.0)
    # Well below the 10 s ping interval / 5 s backoff that close() must not wait out.
    assert time.monotonic() - start < 2.5
    assert seen == []


async def test_close_stops_the_iterator_during_a_hanging_handshake() -> None:
    done = asyncio.Event()

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await done.wait()  # accept the TCP connection, never answer the HTTP upgrade
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        ws = ComfyWebSocket(f"http://127.0.0.1:{port}", "c", open_timeout=10.0)
        task = asyncio.create_task(consume(ws, []))
        await asyncio.sleep(0.2)
        start = time.monotonic()
        await ws.close()
        await asyncio.wait_for(task, 4.0)
        # Well below the 10 s handshake timeout that close() must not wait out.
        assert time.monotonic() - start < 2.5
    finally:
        done.set()
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)


async def test_breaking_out_closes_the_connection(ws_server: Any) -> None:
    fake, url = await ws_server()
    ws = ComfyWebSocket(url, "c", **FAST)
    async for event in ws.events():
        if isinstance(event, Status):
            break
    await wait_for(lambda: fake.connections[0]["closed"])
    assert not ws.connected


async def test_close_before_iterating(ws_server: Any) -> None:
    fake, url = await ws_server()
    ws = ComfyWebSocket(url, "c", **FAST)
    await ws.close()
    assert [e async for e in ws.events()] == []
    assert fake.connections == []


async def test_backend_down_at_start_then_up(ws_server: Any, closed_port: int) -> None:
    ws = ComfyWebSocket(f"http://127.0.0.1:{closed_port}", "c", **FAST)
    events = ws.events()
    try:
        first = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0.3)  # several refused attempts
        assert not first.done()
        await ws_server(port=closed_port)
        connected = await asyncio.wait_for(first, 3)
        assert isinstance(connected, Connected) and connected.attempt > 1 and not connected.is_reconnect
    finally:
        await ws.close()
        await events.aclose()


async def test_events_can_only_be_iterated_once(ws_server: Any) -> None:
    _, url = await ws_server()
    ws = ComfyWebSocket(url, "c", **FAST)
    first = ws.events()
    try:
        await take(first, 1)
        with pytest.raises(RuntimeError):
            await ws.events().__anext__()
    finally:
        await ws.close()
        await first.aclose()


# ------------------------------------------------------------------------------------------------
# Pure helpers


def test_websocket_url() -> None:
    assert (
        websocket_url("http://127.0.0.1:8188", "harness-client-a")
        == "ws://127.0.0.1:8188/ws?clientId=harness-client-a"
    )
    assert websocket_url("https://h/prefix/", "a b&c") == "wss://h/prefix/ws?clientId=a%20b%26c"
    assert websocket_url("ws://h:1", None) == "ws://h:1/ws"
    with pytest.raises(ValueError):
        websocket_url("ftp://h", "c")


def test_backoff_grows_with_jitter_up_to_max() -> None:
    random.seed(7)
    ws = ComfyWebSocket("http://h", "c", backoff_initial=0.2, backoff_max=10.0)
    for failures, ceiling in [(1, 0.2), (2, 0.4), (3, 0.8), (6, 6.4), (7, 10.0), (50, 10.0)]:
        delays = [ws._backoff(failures) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered


async def test_a_briefly_busy_consumer_does_not_kill_the_connection(ws_server: Any) -> None:
    """While the consumer is busy, frames pile up; the keepalive must still see its pongs."""
    frames = [
        json.dumps({"type": "progress", "data": {"value": i, "max": 300, "prompt_id": "p", "node": "2"}})
        for i in range(300)
    ]
    _, url = await ws_server([{"frames": frames}])
    ws = ComfyWebSocket(url, "c", **FAST)
    events = ws.events()
    try:
        await take(events, 3)
        await asyncio.sleep(0.8)  # several ping intervals with a full socket
        got = await take(events, 300)
        assert not any(isinstance(e, (Disconnected, Connected)) for e in got)
        assert [e.value for e in got] == list(range(300))
    finally:
        await ws.close()
        await events.aclose()
