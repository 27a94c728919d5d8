"""Replays every recorded scenario (tests/data/recordings/scenario_*.json) against an emulator
over real loopback sockets, with the recorded request bodies and client ids, and compares what
comes back: WebSocket message types and order, normalized message contents (see helpers.py),
binary frame headers, HTTP statuses and bodies, history and queue bodies.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from typing import Any

import aiohttp
import pytest
from PIL import Image

from comfy_emulator import Emulator

from .helpers import (
    CLIENT_A,
    CLIENT_B,
    CLIENT_FLAGS,
    Normalizer,
    WsClient,
    assert_same_frames,
    assert_strictly_equal,
    recording,
    types,
)


def http_entries(scenario: dict[str, Any], method: str, path: str) -> list[dict[str, Any]]:
    return [h for h in scenario["http"] if h["method"] == method and h["path"].startswith(path)]


async def post_prompt(http: aiohttp.ClientSession, emu: Emulator, body: dict[str, Any]) -> dict[str, Any]:
    async with http.post(emu.base_url + "/prompt", json=body) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as r:
        return r.status, await r.json()


def assert_history(recorded: dict[str, Any], got: dict[str, Any], what: str = "history") -> None:
    assert_strictly_equal(Normalizer().history(got), Normalizer().history(recorded), what)


def assert_prompt_response(recorded: dict[str, Any], got: dict[str, Any]) -> None:
    assert list(got) == list(recorded) == ["prompt_id", "number", "node_errors"]
    assert isinstance(got["number"], int) and got["node_errors"] == recorded["node_errors"] == {}


def png_text_chunks(data: bytes) -> tuple[list[str], dict[str, str]]:
    chunks, text, pos = [], {}, 8
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8].decode()
        chunks.append(kind)
        if kind == "tEXt":
            key, _, value = data[pos + 8 : pos + 8 + n].partition(b"\0")
            text[key.decode()] = value.decode("latin-1")
        pos += 12 + n
    return chunks, text


# -- handshake ----------------------------------------------------------------------------------


async def test_ws_handshake(emu: Emulator, http: aiohttp.ClientSession) -> None:
    rec = {c["label"]: c for c in recording("scenario_ws_handshake.json")["connections"]}
    a = await WsClient.connect(http, emu.base_url, CLIENT_A)
    flags = await WsClient.connect(http, emu.base_url, CLIENT_FLAGS, flags=True)
    anon = await WsClient.connect(http, emu.base_url)
    for client, label, n in ((a, "A (no feature flags)", 1), (flags, "flags", 2), (anon, "no clientId", 1)):
        await client.wait_for(lambda f, n=n: len(f) >= n)
        await client.settle(0.1)
        assert_same_frames(rec[label]["ws_messages"], client.frames, label)
    a2 = await WsClient.connect(http, emu.base_url, CLIENT_A)
    await a2.wait_for(lambda f: len(f) >= 1)
    assert_same_frames(rec["A second connection, same clientId"]["ws_messages"], a2.frames, "second A")
    # The replaced socket stays open but gets nothing more, not even broadcasts.
    before = len(a.frames)
    resp = await post_prompt(http, emu, blur_body(1, CLIENT_A))
    await a2.wait_done(resp["prompt_id"])
    await a.settle(0.1)
    assert len(a.frames) == before and not a.closed
    assert "execution_success" in types(a2.frames)


def blur_body(color: int, client_id: str | None) -> dict[str, Any]:
    body = recording("scenario_basic_blur.json")["http"][0]["request_json"]
    body["prompt"]["1"]["inputs"]["color"] = color
    if client_id is None:
        body.pop("client_id")
    else:
        body["client_id"] = client_id
    return body


# -- simple jobs --------------------------------------------------------------------------------


async def test_basic_blur(emu: Emulator, http: aiohttp.ClientSession) -> None:
    rec = recording("scenario_basic_blur.json")
    ws = await WsClient.connect(http, emu.base_url, rec["client_id"])
    await ws.wait_for(lambda f: len(f) >= 1)
    start = len(ws.frames)
    post = rec["http"][0]
    resp = await post_prompt(http, emu, post["request_json"])
    assert_prompt_response(post["response_json"], resp)
    await ws.wait_done(resp["prompt_id"])
    await ws.settle()
    assert_same_frames(rec["ws_messages"], ws.since(start), "basic_blur")

    status, hist = await get_json(http, f"{emu.base_url}/history/{resp['prompt_id']}")
    assert status == 200
    assert_history(rec["http"][1]["response_json"], hist)

    view = rec["http"][2]
    async with http.get(emu.base_url + "/view", params=view["params"]) as r:
        assert r.status == 200
        data = await r.read()
        assert r.headers["Content-Type"] == view["response_headers"]["content-type"]
        assert r.headers["Content-Disposition"] == view["response_headers"]["content-disposition"]
        assert int(r.headers["Content-Length"]) == len(data)
    assert data[:8].hex() == view["response_first8_hex"]
    chunks, text = png_text_chunks(data)
    assert chunks == rec["view_png"]["chunks"]
    assert text == rec["view_png"]["text"]
    assert Image.open(io.BytesIO(data)).size == (64, 64)


async def test_caller_prompt_id(emu: Emulator, http: aiohttp.ClientSession) -> None:
    rec = recording("scenario_caller_prompt_id.json")
    ws = await WsClient.connect(http, emu.base_url, rec["client_id"])
    await ws.wait_for(lambda f: len(f) >= 1)
    start = len(ws.frames)
    post = rec["http"][0]
    resp = await post_prompt(http, emu, post["request_json"])
    assert resp["prompt_id"] == post["response_json"]["prompt_id"] == post["request_json"]["prompt_id"]
    await ws.wait_done(resp["prompt_id"])
    await ws.settle()
    assert_same_frames(rec["ws_messages"], ws.since(start), "caller_prompt_id")
    assert emu.prompts_received == [resp["prompt_id"]] == emu.executed_prompts


async def test_invalid_prompts(emu: Emulator, http: aiohttp.ClientSession) -> None:
    rec = recording("scenario_invalid_prompts.json")
    ws = await WsClient.connect(http, emu.base_url, rec["client_id"])
    await ws.wait_for(lambda f: len(f) >= 1)
    for entry in rec["http"]:
        if "request_raw" in entry:
            kw: dict[str, Any] = {
                "data": entry["request_raw"],
                "headers": {"Content-Type": "application/json"},
            }
        else:
            kw = {"json": entry["request_json"]}
        async with http.post(emu.base_url + "/prompt", **kw) as r:
            assert r.status == entry["status"], entry
            assert r.headers["Content-Type"] == entry["response_headers"]["content-type"]
            if "response_json" in entry:
                assert_strictly_equal(await r.json(), entry["response_json"], str(entry["request_json"])[:80])
            else:
                assert await r.text() == entry["response_text"]
    await ws.settle()
    assert types(ws.frames) == ["status"], "no message is sent for an invalid prompt"
    assert emu.prompts_received == []


async def test_errors_prompt_400_short_view(emu: Emulator, http: aiohttp.ClientSession) -> None:
    """errors_prompt_400.json holds the same cases; each recorded body appears in the scenario."""
    short = recording("errors_prompt_400.json")
    bodies = [e.get("response_json") for e in recording("scenario_invalid_prompts.json")["http"]]
    for name, case in short.items():
        if case["status"] == 400:
            assert case["body"] in bodies, name


async def test_upload_loadimage(emu: Emulator, http: aiohttp.ClientSession) -> None:
    rec = recording("scenario_upload_loadimage.json")
    ws = await WsClient.connect(http, emu.base_url, rec["client_id"])
    await ws.wait_for(lambda f: len(f) >= 1)
    first = png_bytes((10, 20, 30))
    uploads = [e for e in rec["http"] if e["path"] == "/upload/image"]
    contents = [first, png_bytes((200, 100, 50)), png_bytes((1, 2, 3))]
    for entry, content in zip(uploads, contents, strict=True):
        form = aiohttp.FormData()
        for k, v in entry.get("form_fields", {}).items():
            form.add_field(k, v)
        f = entry["files"]["image"]
        form.add_field("image", content, filename=f["filename"], content_type=f["content_type"])
        async with http.post(emu.base_url + "/upload/image", data=form) as r:
            assert r.status == entry["status"]
            assert await r.json() == entry["response_json"]
    assert (emu.input_dir / "harness_upload (1).png").read_bytes() == contents[1]
    assert (emu.input_dir / "harness" / "sub_upload.png").read_bytes() == contents[2]

    start = len(ws.frames)
    post = next(e for e in rec["http"] if e["path"] == "/prompt")
    resp = await post_prompt(http, emu, post["request_json"])
    await ws.wait_done(resp["prompt_id"])
    await ws.settle()
    assert_same_frames(rec["ws_messages"], ws.since(start), "upload_loadimage")
    hist_entry = next(e for e in rec["http"] if e["path"].startswith("/history/"))
    _, hist = await get_json(http, f"{emu.base_url}/history/{resp['prompt_id']}")
    assert_history(hist_entry["response_json"], hist)

    views = [e for e in rec["http"] if e["path"] == "/view"]
    out_name = hist[resp["prompt_id"]]["outputs"]["4"]["images"][0]["filename"]
    for entry in views:
        params = dict(entry["params"])
        if params["filename"].startswith("harness_load_"):
            params["filename"] = out_name
        async with http.get(emu.base_url + "/view", params=params) as r:
            data = await r.read()
            assert r.status == entry["status"], entry
            assert data[:8].hex() == entry["response_first8_hex"]
            if r.status == 200:
                assert r.headers["Content-Type"] == entry["response_headers"]["content-type"]
                assert r.headers["Content-Disposition"] == f'filename="{params["filename"]}"'
            else:
                assert r.headers["Content-Length"] == "0"
            if params["filename"] == "harness_upload.png":
                assert data == first
            if params["filename"] == out_name:
                chunks, text = png_text_chunks(data)
                assert chunks == rec["view_png"]["chunks"]
                got, want = json.loads(text["prompt"]), json.loads(rec["view_png"]["text"]["prompt"])
                # LoadImage's IS_CHANGED (the file's sha256) is written into the PNG's prompt.
                assert got["1"].pop("is_changed") == [hashlib.sha256(first).hexdigest()]
                assert len(want["1"].pop("is_changed")[0]) == 64
                assert got == want
                img = Image.open(io.BytesIO(data))
                assert img.size == (96, 64)
                assert img.convert("RGB").getpixel((0, 0)) == (245, 235, 225)  # inverted (10, 20, 30)


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


# -- slow jobs, previews, errors, interrupts ---------------------------------------------------


async def run_recorded_job(
    emu: Emulator, http: aiohttp.ClientSession, name: str, flags: bool = False
) -> tuple[dict[str, Any], WsClient, dict[str, Any], int]:
    rec = recording(f"scenario_{name}.json")
    ws = await WsClient.connect(http, emu.base_url, rec["client_id"], flags=flags)
    await ws.wait_for(lambda f: len(f) >= (2 if flags else 1))
    start = 0 if flags else len(ws.frames)
    post = next(e for e in rec["http"] if e["method"] == "POST" and e["path"] == "/prompt")
    resp = await post_prompt(http, emu, post["request_json"])
    return rec, ws, resp, start


async def test_slow_job(emu: Emulator, http: aiohttp.ClientSession) -> None:
    rec, ws, resp, start = await run_recorded_job(emu, http, "slow_job")
    await ws.wait_message("progress", value=1)
    queue_rec = next(e for e in rec["http"] if e["path"] == "/queue")
    status, queue = await get_json(http, emu.base_url + "/queue")
    assert status == 200
    n1, n2 = Normalizer(), Normalizer()
    assert_strictly_equal(n2.queue(queue), n1.queue(queue_rec["response_json"]), "queue")
    await ws.wait_done(resp["prompt_id"])
    await ws.settle()
    assert_same_frames(rec["ws_messages"], ws.since(start), "slow_job")
    _, hist = await get_json(http, f"{emu.base_url}/history/{resp['prompt_id']}")
    assert_history(recording("history_slow.json"), hist)


async def test_previews_legacy_client(emu: Emulator, http: aiohttp.ClientSession) -> None:
    rec, ws, resp, start = await run_recorded_job(emu, http, "previews_legacy_client")
    await ws.wait_done(resp["prompt_id"])
    await ws.settle()
    assert_same_frames(rec["ws_messages"], ws.since(start), "previews_legacy_client")


async def test_previews_feature_flags_client(emu: Emulator, http: aiohttp.ClientSession) -> None:
    rec, ws, resp, start = await run_recorded_job(emu, http, "previews_feature_flags_client", flags=True)
    await ws.wait_done(resp["prompt_id"])
    await ws.settle()
    assert_same_frames(rec["ws_messages"], ws.since(start), "previews_feature_flags_client")


async def test_failing_job(emu: Emulator, http: aiohttp.ClientSession) -> None:
    rec, ws, resp, start = await run_recorded_job(emu, http, "failing_job")
    await ws.wait_done(resp["prompt_id"])
    await ws.settle()
    assert_same_frames(rec["ws_messages"], ws.since(start), "failing_job")
    error = next(
        f["json"]["data"]
        for f in ws.frames
        if f["frame"] == "text" and f["json"]["type"] == "execution_error"
    )
    recorded_error = next(
        m["json"]["data"] for m in rec["ws_messages"] if m["json"]["type"] == "execution_error"
    )
    assert error["traceback"] == recorded_error["traceback"]
    assert list(error["current_inputs"]) == list(recorded_error["current_inputs"]) == ["image"]
    _, hist = await get_json(http, f"{emu.base_url}/history/{resp['prompt_id']}")
    assert_history(recording("history_failed.json"), hist)


async def test_interrupted_job(emu: Emulator, http: aiohttp.ClientSession) -> None:
    rec, ws, resp, start = await run_recorded_job(emu, http, "interrupted_job")
    await ws.wait_message("progress", value=1)
    async with http.post(emu.base_url + "/interrupt") as r:
        assert r.status == 200 and await r.read() == b""
    await ws.wait_done(resp["prompt_id"])
    await ws.settle()
    assert_same_frames(rec["ws_messages"], ws.since(start), "interrupted_job")
    _, hist = await get_json(http, f"{emu.base_url}/history/{resp['prompt_id']}")
    assert_history(recording("history_interrupted.json"), hist)
    assert emu.interrupts == [{}]


async def test_interrupted_job_targeted(emu: Emulator, http: aiohttp.ClientSession) -> None:
    rec, ws, resp, start = await run_recorded_job(emu, http, "interrupted_job_targeted")
    bodies = [e["request_json"] for e in rec["http"] if e["path"] == "/interrupt"]
    await ws.wait_message("progress", value=1)
    async with http.post(emu.base_url + "/interrupt", json=bodies[0]) as r:
        assert r.status == 200
    await ws.wait_message("progress", value=4)
    async with http.post(emu.base_url + "/interrupt", json={"prompt_id": resp["prompt_id"]}) as r:
        assert r.status == 200
    await ws.wait_done(resp["prompt_id"])
    await ws.settle()
    assert_same_frames(rec["ws_messages"], ws.since(start), "interrupted_job_targeted")


async def test_queue_delete_pending(emu: Emulator, http: aiohttp.ClientSession) -> None:
    rec = recording("scenario_queue_delete_pending.json")
    ws = await WsClient.connect(http, emu.base_url, rec["client_id"])
    await ws.wait_for(lambda f: len(f) >= 1)
    start = len(ws.frames)
    posts = [e for e in rec["http"] if e["path"] == "/prompt"]
    queues = [e for e in rec["http"] if e["method"] == "GET" and e["path"] == "/queue"]
    norm_rec, norm_got = Normalizer(), Normalizer()
    job1 = await post_prompt(http, emu, posts[0]["request_json"])
    await ws.wait_message("executing", node="2")
    job2 = await post_prompt(http, emu, posts[1]["request_json"])
    norm_rec.pid(posts[0]["response_json"]["prompt_id"]), norm_rec.pid(posts[1]["response_json"]["prompt_id"])
    norm_got.pid(job1["prompt_id"]), norm_got.pid(job2["prompt_id"])
    _, queue = await get_json(http, emu.base_url + "/queue")
    assert_strictly_equal(norm_got.queue(queue), norm_rec.queue(queues[0]["response_json"]), "queue before")
    await ws.wait_message("progress", value=1)
    async with http.post(emu.base_url + "/queue", json={"delete": [job2["prompt_id"]]}) as r:
        assert r.status == 200
    _, queue = await get_json(http, emu.base_url + "/queue")
    assert_strictly_equal(norm_got.queue(queue), norm_rec.queue(queues[1]["response_json"]), "queue after")
    await ws.wait_done(job1["prompt_id"])
    await ws.settle()
    assert_same_frames(rec["ws_messages"], ws.since(start), "queue_delete_pending")
    status, hist = await get_json(http, f"{emu.base_url}/history/{job2['prompt_id']}")
    assert status == 200 and hist == rec["deleted_job_history"] == {}
    assert job2["prompt_id"] not in json.dumps(ws.frames)
    assert emu.executed_prompts == [job1["prompt_id"]]


async def test_queue_while_running_with_pending_shape(emu: Emulator, http: aiohttp.ClientSession) -> None:
    rec = recording("queue_while_running_with_pending.json")
    bodies = [
        {"prompt": item[2], "client_id": item[3]["client_id"]}
        for item in rec["queue_running"] + rec["queue_pending"]
    ]
    ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
    ids = [(await post_prompt(http, emu, b))["prompt_id"] for b in bodies]
    await ws.wait_message("executing", node="2")
    _, queue = await get_json(http, emu.base_url + "/queue")
    assert_strictly_equal(Normalizer().queue(queue), Normalizer().queue(rec), "queue")
    async with http.post(emu.base_url + "/queue", json={"clear": True}) as r:
        assert r.status == 200
    async with http.post(emu.base_url + "/interrupt") as r:
        assert r.status == 200
    await ws.wait_done(ids[0])


async def test_cached_second_prompt(emu: Emulator, http: aiohttp.ClientSession) -> None:
    rec = recording("scenario_cached_second_prompt.json")
    ws = await WsClient.connect(http, emu.base_url, rec["client_id"])
    await ws.wait_for(lambda f: len(f) >= 1)
    start = len(ws.frames)
    posts = [e for e in rec["http"] if e["path"] == "/prompt"]
    ids = []
    for post in posts:
        resp = await post_prompt(http, emu, post["request_json"])
        ids.append(resp["prompt_id"])
        await ws.wait_done(resp["prompt_id"])
    await ws.settle()
    got = ws.since(start)
    assert_same_frames(rec["ws_messages"], got, "cached_second_prompt")
    n1 = len(rec["ws_first_types"])
    n2 = n1 + len(rec["ws_second_types"])
    assert types(got[:n1]) == rec["ws_first_types"]
    assert types(got[n1:n2]) == rec["ws_second_types"]
    assert types(got[n2:]) == rec["ws_third_types"]
    _, hist = await get_json(http, f"{emu.base_url}/history/{ids[1]}")
    assert_history(recording("history_cached.json"), hist)
    # No new file for the cached run; one new file for the third run.
    assert sorted(p.name for p in emu.output_dir.iterdir()) == [
        "harness_slow_00001_.png",
        "harness_slow_other_00001_.png",
    ]


# -- who receives what ------------------------------------------------------------------------


async def test_broadcast(emu: Emulator, http: aiohttp.ClientSession) -> None:
    rec = recording("scenario_broadcast.json")
    a = await WsClient.connect(http, emu.base_url, CLIENT_A)
    b = await WsClient.connect(http, emu.base_url, CLIENT_B)
    anon = await WsClient.connect(http, emu.base_url)
    for c in (a, b, anon):
        await c.wait_for(lambda f: len(f) >= 1)
    posts = [e["request_json"] for e in rec["http"] if e["path"] == "/prompt"]
    phases = ["job_from_B", "job_without_client_id", "job_for_absent_client"]
    for body, phase in zip(posts, phases, strict=True):
        marks = {name: len(c.frames) for name, c in (("A", a), ("B", b), ("anon", anon))}
        resp = await post_prompt(http, emu, body)
        await a.wait_message("status", start=marks["A"] + 1, status={"exec_info": {"queue_remaining": 0}})
        if phase == "job_from_B":
            await b.wait_done(resp["prompt_id"])
        for c in (a, b, anon):
            await c.settle(0.1)
        for name, c in (("A", a), ("B", b), ("anon", anon)):
            assert_same_frames(rec[phase][name], c.since(marks[name]), f"broadcast.{phase}.{name}")


async def test_interrupt_job_without_client_id(emu: Emulator, http: aiohttp.ClientSession) -> None:
    rec = recording("scenario_interrupt_job_without_client_id.json")
    a = await WsClient.connect(http, emu.base_url, CLIENT_A)
    b = await WsClient.connect(http, emu.base_url, CLIENT_B)
    for c in (a, b):
        await c.wait_for(lambda f: len(f) >= 1)
    marks = (len(a.frames), len(b.frames))
    post = next(e for e in rec["http"] if e["path"] == "/prompt")
    resp = await post_prompt(http, emu, post["request_json"])
    await a.wait_message("progress", value=1)
    async with http.post(emu.base_url + "/interrupt", json={"prompt_id": resp["prompt_id"]}) as r:
        assert r.status == 200
    await a.wait_message("status", start=marks[0] + 2, status={"exec_info": {"queue_remaining": 0}})
    await a.settle()
    assert_same_frames(rec["A"], a.since(marks[0]), "A")
    assert_same_frames(rec["B"], b.since(marks[1]), "B")
    hist_entry = next(e for e in rec["http"] if e["path"].startswith("/history/"))
    _, hist = await get_json(http, f"{emu.base_url}/history/{resp['prompt_id']}")
    assert_history(hist_entry["response_json"], hist)


async def test_reconnect_mid_job(emu: Emulator, http: aiohttp.ClientSession) -> None:
    rec = recording("scenario_reconnect_mid_job.json")
    b = await WsClient.connect(http, emu.base_url, CLIENT_B)
    post = next(e for e in rec["http"] if e["path"] == "/prompt")
    resp = await post_prompt(http, emu, post["request_json"])
    await b.wait_message("progress", value=1)
    await b.close()
    await asyncio.sleep(0.5)
    b2 = await WsClient.connect(http, emu.base_url, CLIENT_B)
    await b2.wait_done(resp["prompt_id"])
    await b2.settle()
    recorded, got = rec["ws_messages"], b2.frames
    # The new socket joins at some step: compare the head (status + the re-sent `executing`
    # with only `node`), the progress steps as alternating pairs, and the tail exactly.
    assert_same_frames(recorded[:2], got[:2], "reconnect head")
    assert got[1]["json"]["data"] == {"node": "2"}

    def split(frames: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
        i = 2
        while types(frames[i : i + 2]) == ["progress_state", "progress"]:
            i += 2
        return frames[2:i], frames[i:]

    rec_steps, rec_tail = split(recorded)
    got_steps, got_tail = split(got)
    assert got_steps, "no progress after reconnecting"
    values = [f["json"]["data"]["value"] for f in got_steps if f["json"]["type"] == "progress"]
    assert values == list(range(values[0], 11)) and values[0] >= 2
    assert_same_frames(rec_steps[-len(got_steps) :], got_steps, "reconnect steps")
    assert_same_frames(rec_tail, got_tail, "reconnect tail")


# -- plain endpoints ----------------------------------------------------------------------------


EXACT_BODIES = {"/queue", "/prompt", "/features", "/models", "/embeddings", "/object_info/SaveImage", "/object_info/NoSuchNode",
                "/history/no-such-id", "/api/queue", "/users", "/settings", "/v2/userdata", "/workflow_templates"}  # fmt: skip


async def test_endpoints(emu: Emulator, http: aiohttp.ClientSession) -> None:
    rec = recording("scenario_endpoints.json")
    for entry in rec["http"]:
        path, params = entry["path"], entry.get("params")
        if path.startswith("/history") and params:
            continue  # needs earlier jobs; see test_history_max_items
        async with http.get(emu.base_url + path, params=params) as r:
            body = await r.read()
            assert r.status == entry["status"], path
            if r.status != 200:
                continue
            assert r.headers["Content-Type"] == entry["response_headers"]["content-type"], path
            data = json.loads(body)
            if path in EXACT_BODIES:
                assert data == entry["response_json"], path
            elif "response_json" in entry:
                assert type(data) is type(entry["response_json"]), path
                if isinstance(data, dict) and path != "/internal/folder_paths":
                    assert set(data) == set(entry["response_json"]), path
    stats = (await get_json(http, emu.base_url + "/system_stats"))[1]
    recorded_stats = recording("system_stats.json")
    assert set(stats) == set(recorded_stats)
    assert set(stats["system"]) == set(recorded_stats["system"])
    assert [set(d) for d in stats["devices"]] == [set(d) for d in recorded_stats["devices"]]
    assert stats["system"]["comfyui_version"] == "0.3.64"


async def test_object_info_matches_recording(http: aiohttp.ClientSession) -> None:
    """With no models and the recorded input files, /object_info is the recorded body."""
    from comfy_emulator import EmulatorConfig
    from comfy_emulator.config import DEFAULT_OBJECT_INFO_PATH

    emu = Emulator(EmulatorConfig(models={}))
    for name in ("harness_upload.png", "harness_upload (1).png"):
        (emu.input_dir / name).write_bytes(png_bytes((0, 0, 0)))
    await emu.start()
    try:
        _, body = await get_json(http, emu.base_url + "/object_info")
        assert body == json.loads(DEFAULT_OBJECT_INFO_PATH.read_text())
        assert len(body) == 480
        for name in ("SaveImage", "EmptyImage"):
            _, one = await get_json(http, f"{emu.base_url}/api/object_info/{name}")
            assert one == recording(f"object_info_{name}.json")
        _, harness = await get_json(http, emu.base_url + "/object_info/HarnessSlowSampler")
        assert harness == {
            "HarnessSlowSampler": recording("object_info_harness_nodes.json")["HarnessSlowSampler"]
        }
        selected = recording("object_info_selected.json")
        for name, info in selected.items():
            assert body[name] == info, name
        keys = recording("object_info_keys.json")
        assert len(keys["node_names"]) == 478 and set(body) == set(keys["node_names"]) | {
            "HarnessSlowSampler",
            "HarnessFail",
        }
    finally:
        await emu.stop()


async def test_history_max_items(emu: Emulator, http: aiohttp.ClientSession) -> None:
    rec = next(
        e for e in recording("scenario_endpoints.json")["http"] if e["path"] == "/history" and e.get("params")
    )
    ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
    ids = []
    for color in (1, 2, 3):
        resp = await post_prompt(http, emu, blur_body(color, CLIENT_A))
        ids.append(resp["prompt_id"])
        await ws.wait_done(resp["prompt_id"])
    _, body = await get_json(http, emu.base_url + "/history?max_items=2")
    assert list(body) == ids[1:]
    assert len(rec["response_json"]) == 2
    for entry in body.values():
        assert set(entry) == {"prompt", "outputs", "status", "meta"}
    _, everything = await get_json(http, emu.base_url + "/api/history")
    assert list(everything) == ids
    async with http.post(emu.base_url + "/history", json={"delete": [ids[0]]}) as r:
        assert r.status == 200
    assert list((await get_json(http, emu.base_url + "/history"))[1]) == ids[1:]
    async with http.post(emu.base_url + "/api/history", json={"clear": True}) as r:
        assert r.status == 200
    assert (await get_json(http, emu.base_url + "/history"))[1] == {}


@pytest.mark.parametrize(
    "path", ["/prompt", "/queue", "/history", "/object_info/EmptyImage", "/features", "/system_stats"]
)
async def test_api_aliases(emu: Emulator, http: aiohttp.ClientSession, path: str) -> None:
    a = await get_json(http, emu.base_url + path)
    b = await get_json(http, emu.base_url + "/api" + path)
    assert a[0] == b[0] == 200
    if path != "/system_stats":
        assert a[1] == b[1]
