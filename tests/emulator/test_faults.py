"""Fault injection: each fault, through the Python API and through `/emulator/...`."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from comfy_emulator import Emulator

from .helpers import CLIENT_A, WsClient, types


def blur(color: int, client_id: str | None = CLIENT_A) -> dict[str, Any]:
    body: dict[str, Any] = {
        "prompt": {
            "1": {
                "class_type": "EmptyImage",
                "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": color},
            },
            "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "fault"}},
        }
    }
    if client_id:
        body["client_id"] = client_id
    return body


def slow(
    color: int, steps: int = 3, seconds: float = 0.05, client_id: str | None = CLIENT_A
) -> dict[str, Any]:
    body = blur(color, client_id)
    body["prompt"]["2"] = {
        "class_type": "HarnessSlowSampler",
        "inputs": {"image": ["1", 0], "steps": steps, "seconds_per_step": seconds},
    }
    return body


async def post(http: aiohttp.ClientSession, emu: Emulator, body: dict[str, Any]) -> str:
    async with http.post(emu.base_url + "/prompt", json=body) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["prompt_id"]


async def history(http: aiohttp.ClientSession, emu: Emulator, prompt_id: str) -> dict[str, Any]:
    async with http.get(f"{emu.base_url}/history/{prompt_id}") as r:
        return (await r.json()).get(prompt_id, {})


def messages(ws: WsClient, type_: str) -> list[dict[str, Any]]:
    return [f["json"]["data"] for f in ws.frames if f["frame"] == "text" and f["json"]["type"] == type_]


async def test_fail_next(emu: Emulator, http: aiohttp.ClientSession) -> None:
    ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
    ok = await post(http, emu, blur(1))
    await ws.wait_done(ok)
    emu.fail_next(message="boom")
    failed = await post(http, emu, blur(1))  # identical: would be fully cached, fails anyway
    await ws.wait_done(failed)
    error = messages(ws, "execution_error")[-1]
    assert error["prompt_id"] == failed and error["node_id"] == "1" and error["node_type"] == "EmptyImage"
    assert error["exception_message"] == "boom\n" and error["exception_type"] == "RuntimeError"
    assert error["executed"] == [] and error["current_outputs"] == ["1", "2", "3"]
    entry = await history(http, emu, failed)
    assert (
        entry["status"]["status_str"] == "error"
        and entry["status"]["completed"] is False
        and entry["outputs"] == {}
    )
    again = await post(http, emu, blur(2))
    await ws.wait_done(again)
    assert (await history(http, emu, again))["status"]["status_str"] == "success"
    assert emu.executed_prompts == [ok, failed, again]


async def test_fail_next_n(emu: Emulator, http: aiohttp.ClientSession) -> None:
    ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
    emu.fail_next(2)
    ids = [await post(http, emu, blur(i)) for i in range(3)]
    await ws.wait_done(ids[-1])
    assert [(await history(http, emu, i))["status"]["status_str"] for i in ids] == [
        "error",
        "error",
        "success",
    ]


async def test_fail_class(emu: Emulator, http: aiohttp.ClientSession) -> None:
    ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
    emu.fail_class("ImageBlur", message="blur broke", count=1)
    first = await post(http, emu, blur(3))
    await ws.wait_done(first)
    error = messages(ws, "execution_error")[-1]
    assert (error["node_id"], error["node_type"], error["exception_message"], error["executed"]) == (
        "2",
        "ImageBlur",
        "blur broke\n",
        ["1"],
    )
    second = await post(http, emu, blur(4))
    await ws.wait_done(second)
    assert (await history(http, emu, second))["status"]["status_str"] == "success"
    emu.fail_class("SaveImage")  # every run, until cleared
    for color in (5, 6):
        pid = await post(http, emu, blur(color))
        await ws.wait_done(pid)
        assert (await history(http, emu, pid))["status"]["status_str"] == "error"
    emu.fail_class("SaveImage", count=0)
    pid = await post(http, emu, blur(7))
    await ws.wait_done(pid)
    assert (await history(http, emu, pid))["status"]["status_str"] == "success"


async def test_hang_next_in_sampler_until_interrupted(emu: Emulator, http: aiohttp.ClientSession) -> None:
    ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
    emu.hang_next()
    hung = await post(http, emu, slow(1, steps=2, seconds=0.01))
    queued = await post(http, emu, slow(2, steps=2, seconds=0.01))
    await ws.wait_message("executing", node="2", prompt_id=hung)
    await asyncio.sleep(0.3)
    assert not messages(ws, "progress"), "a hung sampler reports no progress"
    async with http.get(emu.base_url + "/queue") as r:
        q = await r.json()
    assert [i[1] for i in q["queue_running"]] == [hung] and [i[1] for i in q["queue_pending"]] == [queued]
    async with http.post(emu.base_url + "/interrupt", json={"prompt_id": hung}) as r:
        assert r.status == 200
    await ws.wait_done(hung)
    interrupted = messages(ws, "execution_interrupted")
    assert [(m["prompt_id"], m["node_id"]) for m in interrupted] == [(hung, "2")]
    await ws.wait_done(queued)
    assert (await history(http, emu, queued))["status"]["status_str"] == "success"


async def test_hang_next_without_sampler_hangs_in_output(emu: Emulator, http: aiohttp.ClientSession) -> None:
    ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
    emu.hang_next()
    pid = await post(http, emu, blur(9))
    await ws.wait_message("executing", node="3", prompt_id=pid)
    await asyncio.sleep(0.2)
    assert not messages(ws, "executed")
    async with http.post(emu.base_url + "/interrupt") as r:
        assert r.status == 200
    await ws.wait_done(pid)
    assert messages(ws, "execution_interrupted")[0]["node_id"] == "3"
    assert emu.interrupts == [{}]


async def test_drop_websockets(emu: Emulator, http: aiohttp.ClientSession) -> None:
    async with ws_connect(emu.ws_url + "?clientId=x") as ws:
        assert json.loads(await ws.recv())["type"] == "status"
        emu.drop_websockets()
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 2)
        assert info.value.rcvd is None  # no close frame: an abrupt drop
    async with ws_connect(emu.ws_url + "?clientId=x") as ws:
        assert json.loads(await ws.recv())["data"]["sid"] == "x"
        emu.drop_websockets(abrupt=False)
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 2)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    assert emu.hub.sockets == {}


async def test_refuse_websockets(emu: Emulator, http: aiohttp.ClientSession) -> None:
    open_ws = await WsClient.connect(http, emu.base_url, "already-open")
    emu.refuse_websockets(True)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(emu.ws_url)
    assert info.value.status == 503
    async with http.get(emu.base_url + "/queue") as r:
        assert r.status == 200
    pid = await post(http, emu, blur(1, client_id="already-open"))
    await open_ws.wait_done(pid)  # open sockets keep working
    emu.refuse_websockets(False)
    ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
    await ws.wait_message("status")


async def test_stall_websockets(emu: Emulator, http: aiohttp.ClientSession) -> None:
    async with ws_connect(emu.ws_url + "?clientId=" + CLIENT_A, ping_interval=None) as ws:
        assert json.loads(await ws.recv())["type"] == "status"
        await asyncio.wait_for(await ws.ping(), 1)  # answered while healthy
        emu.stall_websockets(True)
        pid = await post(http, emu, blur(1))
        await emu.wait_idle()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)
        pong = await ws.ping()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pong), 0.3)
        emu.stall_websockets(False)
        got = []
        while not got or got[-1] != {"type": "executing", "data": {"node": None, "prompt_id": pid}}:
            got.append(json.loads(await asyncio.wait_for(ws.recv(), 2)))
        assert [m["type"] for m in got][:3] == ["status", "status", "execution_start"]
        await asyncio.wait_for(ws.ping(), 1)


async def test_stall_makes_keepalive_clients_give_up(emu: Emulator) -> None:
    emu.stall_websockets()
    async with ws_connect(emu.ws_url, ping_interval=0.1, ping_timeout=0.2) as ws:
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 3)


async def test_restart(emu: Emulator, http: aiohttp.ClientSession) -> None:
    ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
    done = await post(http, emu, blur(1))
    await ws.wait_done(done)
    running = await post(http, emu, slow(2, steps=50, seconds=0.05))
    pending = await post(http, emu, blur(3))
    await ws.wait_message("progress", prompt_id=running)
    await emu.restart()
    await ws.wait_for(lambda f: ws.closed, 2)
    async with http.get(emu.base_url + "/queue") as r:
        assert await r.json() == {"queue_running": [], "queue_pending": []}
    async with http.get(emu.base_url + "/history") as r:
        assert await r.json() == {}
    assert (emu.output_dir / "fault_00001_.png").exists()  # files survive
    ws2 = await WsClient.connect(http, emu.base_url, CLIENT_A)
    async with http.post(emu.base_url + "/prompt", json=blur(1)) as r:
        body = await r.json()
    assert body["number"] == 0  # the counter restarts with the process
    await ws2.wait_done(body["prompt_id"])
    assert "execution_cached" in types(ws2.frames)
    assert messages(ws2, "execution_cached")[0]["nodes"] == []  # the cache is gone too
    assert messages(ws2, "executed")[0]["output"]["images"][0]["filename"] == "fault_00002_.png"
    assert emu.prompts_received == [done, running, pending, body["prompt_id"]]
    assert pending not in emu.executed_prompts


async def test_kill_and_revive(emu: Emulator, http: aiohttp.ClientSession) -> None:
    ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
    pid = await post(http, emu, blur(1))
    await ws.wait_done(pid)
    port = emu.port
    await emu.kill()
    assert not emu.alive
    await ws.wait_for(lambda f: ws.closed, 2)
    with pytest.raises(aiohttp.ClientConnectorError):
        async with aiohttp.ClientSession() as fresh:
            await fresh.get(emu.base_url + "/queue")
    await emu.revive()
    assert emu.alive and emu.port == port
    async with aiohttp.ClientSession() as fresh:
        async with fresh.get(emu.base_url + "/history") as r:
            assert r.status == 200 and await r.json() == {}
        ws2 = await WsClient.connect(fresh, emu.base_url, CLIENT_A)
        pid2 = await post(fresh, emu, blur(2))
        await ws2.wait_done(pid2)


async def test_slow_responses(emu: Emulator, http: aiohttp.ClientSession) -> None:
    emu.slow_responses("/queue", 0.3)
    t0 = time.perf_counter()
    async with http.get(emu.base_url + "/api/queue") as r:
        assert r.status == 200
    assert time.perf_counter() - t0 >= 0.29
    t0 = time.perf_counter()
    async with http.get(emu.base_url + "/prompt") as r:
        assert r.status == 200
    assert time.perf_counter() - t0 < 0.2
    emu.slow_responses("/queue", 0)
    t0 = time.perf_counter()
    async with http.get(emu.base_url + "/queue") as r:
        assert r.status == 200
    assert time.perf_counter() - t0 < 0.2


async def test_error_responses(emu: Emulator, http: aiohttp.ClientSession) -> None:
    emu.error_responses("/prompt", status=503, count=2)
    for _ in range(2):
        async with http.post(emu.base_url + "/prompt", json=blur(1)) as r:
            assert r.status == 503 and r.headers["Content-Type"].startswith("text/plain")
            assert await r.text() == "503: Service Unavailable"
    async with http.post(emu.base_url + "/api/prompt", json=blur(1)) as r:
        assert r.status == 200
    emu.error_responses("/history", status=500)
    for _ in range(3):
        async with http.get(emu.base_url + "/history") as r:
            assert (
                r.status == 500
                and await r.text() == "500 Internal Server Error\n\nServer got itself in trouble"
            )
    emu.clear_faults()
    async with http.get(emu.base_url + "/history") as r:
        assert r.status == 200
    assert len(emu.prompts_received) == 1


async def test_control_endpoints(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """The same faults over HTTP, for an emulator running as a process."""
    ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
    async with http.post(emu.base_url + "/emulator/fail_next", json={"n": 1, "message": "via http"}) as r:
        assert r.status == 200 and (await r.json())["ok"] is True
    pid = await post(http, emu, blur(1))
    await ws.wait_done(pid)
    assert messages(ws, "execution_error")[0]["exception_message"] == "via http\n"
    async with http.post(
        emu.base_url + "/emulator/error_responses", json={"path_prefix": "/queue", "status": 502, "count": 1}
    ) as r:
        assert r.status == 200
    async with http.get(emu.base_url + "/queue") as r:
        assert r.status == 502
    async with http.post(emu.base_url + "/emulator/refuse_websockets", json={"refuse": True}) as r:
        assert r.status == 200
    assert emu.hub.refuse
    async with http.post(emu.base_url + "/emulator/clear_faults") as r:
        assert r.status == 200
    assert not emu.hub.refuse
    async with http.post(emu.base_url + "/interrupt", json={"prompt_id": "nothing-running"}) as r:
        assert r.status == 200
    async with http.get(emu.base_url + "/emulator/stats") as r:
        stats = await r.json()
    assert stats["prompts_received"] == [pid] == stats["executed_prompts"]
    assert stats["interrupts"] == [{"prompt_id": "nothing-running"}]
    assert stats["websockets"] == [CLIENT_A]
    async with http.post(emu.base_url + "/emulator/kill", json={"revive_after": 0.3}) as r:
        assert r.status == 200
    await ws.wait_for(lambda f: ws.closed, 2)
    await asyncio.sleep(0.1)
    assert not emu.alive
    for _ in range(50):
        await asyncio.sleep(0.05)
        if emu.alive:
            break
    async with aiohttp.ClientSession() as fresh:
        async with fresh.get(emu.base_url + "/queue") as r:
            assert r.status == 200
        async with fresh.post(emu.base_url + "/emulator/restart") as r:
            assert r.status == 200


async def test_instances_share_nothing(http: aiohttp.ClientSession) -> None:
    from comfy_emulator import EmulatorConfig

    one, two = Emulator(), Emulator(EmulatorConfig(node_allowlist=["EmptyImage", "SaveImage"]))
    await one.start()
    await two.start()
    try:
        assert one.port != two.port and one.output_dir != two.output_dir
        two.fail_next()
        ws = await WsClient.connect(http, one.base_url, CLIENT_A)
        pid = await post(http, one, blur(1))
        await ws.wait_done(pid)
        assert (await history(http, one, pid))["status"]["status_str"] == "success"
        assert await history(http, two, pid) == {}
        async with http.get(two.base_url + "/object_info") as r:
            assert sorted(await r.json()) == ["EmptyImage", "SaveImage"]
        async with http.post(two.base_url + "/prompt", json=blur(1)) as r:
            assert r.status == 400 and (await r.json())["error"]["type"] == "invalid_prompt"
        assert one.prompts_received == [pid] and two.prompts_received == []
    finally:
        await one.stop()
        await two.stop()


async def test_drop_websockets_also_drops_replaced_sockets(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    old = await WsClient.connect(http, emu.base_url, CLIENT_A)
    new = await WsClient.connect(http, emu.base_url, CLIENT_A)
    await new.wait_message("status")
    assert len(emu.hub.connections) == 2 and list(emu.hub.sockets) == [CLIENT_A]
    emu.drop_websockets()
    await old.wait_for(lambda f: old.closed, 2)
    await new.wait_for(lambda f: new.closed, 2)


async def test_stop_closes_sockets_with_1001() -> None:
    emu = Emulator()
    await emu.start()
    async with ws_connect(emu.ws_url) as ws:
        await ws.recv()
        await emu.stop()
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 2)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001


async def test_set_models_changes_object_info_and_validation(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """A checkpoint copied into a running server: listed by /object_info and accepted by /prompt."""

    def load(name: str) -> dict[str, Any]:
        return {
            "prompt": {
                "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}},
                "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a", "clip": ["1", 1]}},
                "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
                "4": {
                    "class_type": "KSampler",
                    "inputs": {
                        "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["3", 0],
                        "seed": 1, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
                    },
                },
                "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
                "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "late"}},
            },
            "client_id": CLIENT_A,
        }  # fmt: skip

    async def options() -> list[str]:
        async with http.get(emu.base_url + "/object_info/CheckpointLoaderSimple") as r:
            spec = (await r.json())["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"]
        return spec[0] if isinstance(spec[0], list) else spec[1]["options"]

    assert "late.safetensors" not in await options()
    async with http.post(emu.base_url + "/prompt", json=load("late.safetensors")) as r:
        assert r.status == 400
        assert "value_not_in_list" in json.dumps(await r.json())

    async with http.post(
        emu.base_url + "/emulator/set_models", json={"folder": "checkpoints", "files": ["late.safetensors"]}
    ) as r:
        assert r.status == 200
    assert await options() == ["late.safetensors"]
    ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
    accepted = await post(http, emu, load("late.safetensors"))
    await ws.wait_done(accepted)
    assert (await history(http, emu, accepted))["status"]["status_str"] == "success"

    emu.set_models("checkpoints", [])
    assert await options() == []
    async with http.post(emu.base_url + "/emulator/set_models", json={"folder": "checkpoints"}) as r:
        assert r.status == 400
