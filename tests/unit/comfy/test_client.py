"""The REST client against a local aiohttp server that answers with ComfyUI's recorded bodies."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web

from app.comfy import (
    BackendUnavailable,
    ComfyClient,
    ComfyError,
    ExecutionError,
    HistoryEntry,
    NotFound,
    OutputFile,
    PromptRejected,
    QueuedPrompt,
    QueueItem,
    UploadedFile,
)
from tests.ports import free_port

from .helpers import load

BLUR = load("scenario_basic_blur.json")
UPLOAD = load("scenario_upload_loadimage.json")
INVALID = load("scenario_invalid_prompts.json")
ERRORS_400 = load("errors_prompt_400.json")
HISTORIES = {
    pid: body
    for name in (
        "history_blur.json",
        "history_cached.json",
        "history_failed.json",
        "history_interrupted.json",
        "history_loadimage.json",
        "history_slow.json",
    )
    for pid, body in [next(iter(load(name).items()))]
}
BLUR_PROMPT = BLUR["http"][0]["request_json"]["prompt"]
BLUR_VIEW = BLUR["http"][2]
PNG = bytes.fromhex(BLUR_VIEW["response_first8_hex"]).ljust(int(BLUR_VIEW["response_bytes"]), b"\x00")
SERVER_ERROR_500 = INVALID["http"][-1]["response_text"]


class FakeComfy:
    """Answers like the recorded ComfyUI. `override` forces the next answers of one path, and every
    request is kept in `requests` so tests can check what the client sent."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.override: dict[str, tuple[int, str, str]] = {}  # path -> (status, body, content type)
        self.prompt_answer: tuple[int, Any] | None = None
        self.uploaded: dict[str, bytes] = {}
        self.stream_gate = asyncio.Event()
        self.delay = 0.0

        app = web.Application(middlewares=[self.middleware], client_max_size=64 * 1024**2)
        app.router.add_post("/prompt", self.prompt)
        app.router.add_get("/history/{prompt_id}", self.history)
        app.router.add_get("/queue", self.get_queue)
        app.router.add_post("/queue", self.post_queue)
        app.router.add_post("/interrupt", self.interrupt)
        app.router.add_get("/view", self.view)
        app.router.add_post("/upload/image", self.upload)
        app.router.add_post("/upload/mask", self.upload)
        app.router.add_get("/object_info", self.object_info)
        app.router.add_get("/object_info/{node}", self.object_info)
        app.router.add_get("/system_stats", self.system_stats)
        self.app = app

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        entry: dict[str, Any] = {"method": request.method, "path": request.path, "query": dict(request.query)}
        if request.content_type == "application/json":
            entry["raw"] = await request.read()
            entry["json"] = json.loads(entry["raw"])
        self.requests.append(entry)
        if self.delay:
            await asyncio.sleep(self.delay)
        if request.path in self.override:
            status, body, ctype = self.override[request.path]
            return web.Response(status=status, text=body, content_type=ctype)
        return await handler(request)

    def last(self, path: str) -> dict[str, Any]:
        return [r for r in self.requests if r["path"] == path][-1]

    async def prompt(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.prompt_answer is not None:
            status, answer = self.prompt_answer
            return web.json_response(answer, status=status)
        number = len([r for r in self.requests if r["path"] == "/prompt"]) - 1
        return web.json_response({"prompt_id": body["prompt_id"], "number": number, "node_errors": {}})

    async def history(self, request: web.Request) -> web.Response:
        pid = request.match_info["prompt_id"]
        return web.json_response({pid: HISTORIES[pid]} if pid in HISTORIES else {})

    async def get_queue(self, request: web.Request) -> web.Response:
        return web.json_response(load("queue_while_running_with_pending.json"))

    async def post_queue(self, request: web.Request) -> web.Response:
        return web.Response()

    async def interrupt(self, request: web.Request) -> web.Response:
        return web.Response()

    async def view(self, request: web.Request) -> web.StreamResponse:
        name = request.query.get("filename")
        if name == "harness_blur_00001_.png":
            return web.Response(
                body=PNG, content_type="image/png", headers={"Content-Disposition": f'filename="{name}"'}
            )
        if name == "big.bin":
            # Send half, then wait until the test has seen it: proves the client streams.
            resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            resp.content_length = 4 * 1024 * 1024
            await resp.prepare(request)
            await resp.write(b"a" * (2 * 1024 * 1024))
            await asyncio.wait_for(self.stream_gate.wait(), 5)
            await resp.write(b"b" * (2 * 1024 * 1024))
            await resp.write_eof()
            return resp
        if name in self.uploaded:
            return web.Response(body=self.uploaded[name], content_type="image/png")
        return web.Response(status=404)  # recorded: 404 with an empty body

    async def upload(self, request: web.Request) -> web.Response:
        post = await request.post()
        image = post["image"]
        fields = {k: v for k, v in post.items() if k != "image"}
        data = image.file.read()
        self.requests[-1].update(
            fields=fields, filename=image.filename, data=data, file_content_type=image.content_type
        )
        name = image.filename
        if name in self.uploaded and fields.get("overwrite") not in ("true", "1"):
            stem, dot, ext = name.rpartition(".")
            name = f"{stem} (1).{ext}"
        self.uploaded[name] = data
        return web.json_response(
            {"name": name, "subfolder": fields.get("subfolder", ""), "type": fields.get("type", "input")}
        )

    async def object_info(self, request: web.Request) -> web.Response:
        node = request.match_info.get("node")
        if node is None:
            return web.json_response(load("object_info_selected.json"))
        if node == "EmptyImage":
            return web.json_response(load("object_info_EmptyImage.json"))
        return web.json_response({})

    async def system_stats(self, request: web.Request) -> web.Response:
        return web.json_response(load("system_stats.json"))


@pytest.fixture
async def fake(serve: Any) -> AsyncIterator[tuple[FakeComfy, ComfyClient]]:
    comfy = FakeComfy()
    server = await serve(comfy.app)
    async with ComfyClient(server.url, timeout=2.0) as client:
        yield comfy, client


# ------------------------------------------------------------------------------------------------
# POST /prompt


async def test_queue_prompt_sends_prompt_id_and_client_id(fake: Any) -> None:
    comfy, client = fake
    recorded = BLUR["http"][0]["response_json"]
    comfy.prompt_answer = (200, recorded)
    queued = await client.queue_prompt(
        BLUR_PROMPT, prompt_id=recorded["prompt_id"], client_id="harness-client-a"
    )
    assert queued == QueuedPrompt(prompt_id=recorded["prompt_id"], number=0, node_errors={})
    sent = comfy.last("/prompt")["json"]
    assert sent == {
        "prompt": BLUR_PROMPT,
        "prompt_id": recorded["prompt_id"],
        "client_id": "harness-client-a",
    }


async def test_queue_prompt_without_client_id_and_with_extra_data(fake: Any) -> None:
    comfy, client = fake
    queued = await client.queue_prompt(
        BLUR_PROMPT,
        prompt_id="00000000-0000-4000-8000-00000000abcd",
        client_id=None,
        extra_data={"extra_pnginfo": {"job": 1}},
    )
    assert queued.prompt_id == "00000000-0000-4000-8000-00000000abcd"
    sent = comfy.last("/prompt")["json"]
    assert "client_id" not in sent
    assert sent["extra_data"] == {"extra_pnginfo": {"job": 1}}
    assert sent["prompt_id"] == "00000000-0000-4000-8000-00000000abcd"


async def test_queue_prompt_partial_node_errors_are_returned(fake: Any) -> None:
    comfy, client = fake
    node_errors = ERRORS_400["bad_enum_value"]["body"]["node_errors"]
    comfy.prompt_answer = (200, {"prompt_id": "p", "number": 7, "node_errors": node_errors})
    queued = await client.queue_prompt({}, prompt_id="p", client_id="c")
    assert queued.number == 7 and queued.node_errors == node_errors


@pytest.mark.parametrize("case", [k for k, v in ERRORS_400.items() if v["status"] == 400])
async def test_queue_prompt_rejections(fake: Any, case: str) -> None:
    comfy, client = fake
    recorded = ERRORS_400[case]
    comfy.prompt_answer = (recorded["status"], recorded["body"])
    with pytest.raises(PromptRejected) as info:
        await client.queue_prompt({"1": {}}, prompt_id="p", client_id="c")
    exc = info.value
    assert isinstance(exc, ComfyError) and not isinstance(exc, BackendUnavailable)
    assert exc.status_code == 400
    assert exc.error == recorded["body"]["error"]
    assert exc.node_errors == recorded["body"]["node_errors"]
    assert exc.error_type == recorded["body"]["error"]["type"]
    assert recorded["body"]["error"]["message"] in str(exc)


async def test_every_recorded_400_from_the_scenario(fake: Any) -> None:
    comfy, client = fake
    rejected = [h for h in INVALID["http"] if h["status"] == 400]
    assert len(rejected) == 10
    for h in rejected:
        comfy.prompt_answer = (400, h["response_json"])
        with pytest.raises(PromptRejected) as info:
            await client.queue_prompt(h["request_json"].get("prompt", {}), prompt_id="p", client_id="c")
        assert info.value.error["type"] == h["response_json"]["error"]["type"]


async def test_queue_prompt_legacy_and_plain_text_rejections(fake: Any) -> None:
    comfy, client = fake
    comfy.prompt_answer = (400, {"error": "no prompt", "node_errors": []})
    with pytest.raises(PromptRejected) as info:
        await client.queue_prompt({}, prompt_id="p", client_id="c")
    assert info.value.error["message"] == "no prompt" and info.value.node_errors == {}
    comfy.prompt_answer = None
    comfy.override["/prompt"] = (400, "Bad Request", "text/plain")
    with pytest.raises(PromptRejected) as info:
        await client.queue_prompt({}, prompt_id="p", client_id="c")
    assert info.value.error["type"] == "http_400" and "Bad Request" in info.value.error["message"]


async def test_queue_prompt_500_is_backend_unavailable(fake: Any) -> None:
    comfy, client = fake
    recorded = ERRORS_400["malformed_json_body"]
    assert recorded["status"] == 500
    comfy.override["/prompt"] = (500, SERVER_ERROR_500, "text/plain")
    with pytest.raises(BackendUnavailable) as info:
        await client.queue_prompt({}, prompt_id="p", client_id="c")
    assert info.value.status_code == 500
    assert "Server got itself in trouble" in str(info.value)


@pytest.mark.parametrize("body", ["not json", "[]", '{"number": "x"}', '{"prompt_id": "p"}'])
async def test_queue_prompt_malformed_200_is_backend_unavailable(fake: Any, body: str) -> None:
    comfy, client = fake
    comfy.override["/prompt"] = (200, body, "application/json")
    with pytest.raises(BackendUnavailable):
        await client.queue_prompt({}, prompt_id="p", client_id="c")


# ------------------------------------------------------------------------------------------------
# History


async def test_history_success_with_files(fake: Any) -> None:
    _, client = fake
    pid = BLUR["prompt_id"]
    entry = await client.get_history(pid)
    assert isinstance(entry, HistoryEntry)
    assert entry.prompt_id == pid
    assert entry.status_str == "success" and entry.completed and entry.succeeded
    assert not entry.interrupted and entry.error() is None
    assert entry.output_files() == [OutputFile("3", "images", "harness_blur_00001_.png", "", "output")]
    assert [t for t, _ in entry.messages] == ["execution_start", "execution_cached", "execution_success"]
    assert entry.number == 0
    assert entry.extra_data == {"client_id": "harness-client-a"}
    assert entry.outputs_to_execute == ["3"]
    assert entry.prompt["1"]["class_type"] == "EmptyImage"
    assert entry.texts() == []


async def test_history_failed(fake: Any) -> None:
    _, client = fake
    pid = load("scenario_failing_job.json")["prompt_id"]
    entry = await client.get_history(pid)
    assert entry is not None
    assert entry.status_str == "error" and not entry.completed and not entry.succeeded
    assert not entry.interrupted
    err = entry.error()
    assert isinstance(err, ExecutionError)
    assert (err.prompt_id, err.node_id, err.node_type) == (pid, "2", "HarnessFail")
    assert (err.exception_type, err.exception_message) == ("RuntimeError", "harness failure\n")
    assert len(err.traceback) == 5
    assert entry.output_files() == []


async def test_history_interrupted(fake: Any) -> None:
    _, client = fake
    entry = await client.get_history("ca9a95a8-dfe4-4948-83b6-47e948d8fb07")
    assert entry is not None
    # ComfyUI reports an interrupt as status_str "error": only the messages tell them apart.
    assert entry.status_str == "error" and entry.interrupted and entry.error() is None


async def test_history_cached_and_loadimage(fake: Any) -> None:
    _, client = fake
    for pid in HISTORIES:
        entry = await client.get_history(pid)
        assert entry is not None and entry.prompt_id == pid
    cached = await client.get_history("d3ca682f-6f07-4cba-972b-a5de9ef7020a")
    assert cached is not None and cached.output_files()[0].filename == "harness_slow_00005_.png"
    assert cached.meta["3"]["node_id"] == "3"


async def test_history_unknown_is_none(fake: Any) -> None:
    comfy, client = fake
    assert await client.get_history("no-such-id") is None
    assert comfy.last("/history/no-such-id")["method"] == "GET"


async def test_history_malformed(fake: Any) -> None:
    comfy, client = fake
    comfy.override["/history/x"] = (200, '["x"]', "application/json")
    with pytest.raises(BackendUnavailable):
        await client.get_history("x")
    comfy.override["/history/x"] = (200, '{"x": {"outputs": "none"}}', "application/json")
    with pytest.raises(BackendUnavailable):
        await client.get_history("x")


def test_output_files_and_texts_walk_every_kind() -> None:
    entry = HistoryEntry.from_json(
        "p",
        {
            "outputs": {
                "9": {
                    "images": [{"filename": "a.png", "subfolder": "s", "type": "output"}],
                    "animated": [False],
                },
                "10": {
                    "gifs": [
                        {"filename": "b.mp4", "subfolder": "", "type": "output", "format": "video/h264-mp4"}
                    ]
                },
                "11": {
                    "audio": [{"filename": "c.flac", "subfolder": "audio", "type": "output"}],
                    "text": ["hello", "world"],
                },
                "12": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}], "text": "bare"},
                "13": {"videos": [{"filename": "d.mp4"}], "meshes": [{"nofilename": 1}], "weird": 5},
            },
            "status": {
                "status_str": "success",
                "completed": True,
                "messages": [["execution_success", {}], "junk"],
            },
        },
    )
    assert entry.output_files() == [
        OutputFile("9", "images", "a.png", "s", "output"),
        OutputFile("10", "gifs", "b.mp4", "", "output"),
        OutputFile("11", "audio", "c.flac", "audio", "output"),
        OutputFile("12", "images", "p.png", "", "temp"),
        OutputFile("13", "videos", "d.mp4", "", "output"),
    ]
    assert entry.texts() == [("11", "text", "hello"), ("11", "text", "world"), ("12", "text", "bare")]
    assert entry.messages == [("execution_success", {})]
    assert entry.number is None


# ------------------------------------------------------------------------------------------------
# Queue


async def test_get_queue(fake: Any) -> None:
    _, client = fake
    queue = await client.get_queue()
    raw = load("queue_while_running_with_pending.json")
    assert [i.prompt_id for i in queue.running] == [raw["queue_running"][0][1]]
    assert [i.prompt_id for i in queue.pending] == [raw["queue_pending"][0][1]]
    item = queue.running[0]
    assert isinstance(item, QueueItem)
    assert item.number == 6 and item.outputs_to_execute == ["3"]
    assert item.extra_data == {"client_id": "harness-client-a"} and item.client_id == "harness-client-a"
    assert item.prompt["2"]["class_type"] == "HarnessSlowSampler"
    assert raw["queue_pending"][0][1] in queue and "nope" not in queue
    assert queue.prompt_ids() == {raw["queue_running"][0][1], raw["queue_pending"][0][1]}


async def test_get_queue_idle_and_sorted(fake: Any) -> None:
    comfy, client = fake
    comfy.override["/queue"] = (200, json.dumps(load("queue_idle.json")), "application/json")
    queue = await client.get_queue()
    assert queue.running == [] and queue.pending == []
    pending = [[5, "b", {}, {}, ["1"]], [3, "a", {}, {}, ["1"], {"sensitive": 1}]]
    comfy.override["/queue"] = (
        200,
        json.dumps({"queue_running": [], "queue_pending": pending}),
        "application/json",
    )
    queue = await client.get_queue()
    assert [i.prompt_id for i in queue.pending] == ["a", "b"]


async def test_get_queue_malformed(fake: Any) -> None:
    comfy, client = fake
    comfy.override["/queue"] = (200, '{"queue_running": [[1]], "queue_pending": []}', "application/json")
    with pytest.raises(BackendUnavailable):
        await client.get_queue()


async def test_delete_from_queue_body(fake: Any) -> None:
    comfy, client = fake
    await client.delete_from_queue(["d4b4ee94-8181-41b3-a604-7f81e3400328"])
    recorded = load("scenario_queue_delete_pending.json")["http"][3]["request_json"]
    assert comfy.last("/queue")["json"] == recorded == {"delete": ["d4b4ee94-8181-41b3-a604-7f81e3400328"]}
    before = len(comfy.requests)
    await client.delete_from_queue([])  # nothing to do: no request
    assert len(comfy.requests) == before


async def test_interrupt_is_always_targeted(fake: Any) -> None:
    comfy, client = fake
    pid = "10d36616-d4b1-4855-a46a-26895857bb0d"
    await client.interrupt(pid)
    sent = comfy.last("/interrupt")
    assert sent["method"] == "POST" and sent["json"] == {"prompt_id": pid}
    assert sent["json"] == load("scenario_interrupted_job_targeted.json")["http"][2]["request_json"]
    with pytest.raises(ValueError):
        await client.interrupt("")


# ------------------------------------------------------------------------------------------------
# /view and uploads


async def test_view_streams_recorded_png(fake: Any) -> None:
    comfy, client = fake
    async with client.view("harness_blur_00001_.png", "", "output") as resp:
        assert resp.content_type == "image/png"
        assert resp.content_length == 480
        data = b"".join([c async for c in resp.aiter_bytes()])
    assert data == PNG and data.startswith(b"\x89PNG\r\n\x1a\n")
    assert comfy.last("/view")["query"] == BLUR_VIEW["params"]


async def test_view_is_streamed_not_buffered(fake: Any) -> None:
    comfy, client = fake
    received = 0
    async with client.view("big.bin", "", "output") as resp:
        assert resp.content_length == 4 * 1024 * 1024
        async for chunk in resp.aiter_bytes():
            received += len(chunk)
            # The server holds back the second half until we got data: if the client buffered
            # the whole body, this would never be reached and the server would time out.
            comfy.stream_gate.set()
    assert received == 4 * 1024 * 1024


async def test_view_missing_is_not_found(fake: Any) -> None:
    _, client = fake
    with pytest.raises(NotFound) as info:
        async with client.view("nope.png", "", "output"):
            pass  # pragma: no cover
    assert info.value.status_code == 404


async def test_view_errors(fake: Any) -> None:
    comfy, client = fake
    comfy.override["/view"] = (500, SERVER_ERROR_500, "text/plain")
    with pytest.raises(BackendUnavailable):
        async with client.view("x.png", "", "output"):
            pass  # pragma: no cover
    comfy.override["/view"] = (403, "Forbidden", "text/plain")
    with pytest.raises(ComfyError) as info:
        async with client.view("../x.png", "", "output"):
            pass  # pragma: no cover
    assert info.value.status_code == 403 and not isinstance(info.value, (NotFound, BackendUnavailable))


async def test_upload_image_bytes(fake: Any) -> None:
    comfy, client = fake
    png = PNG[:121]
    first = UPLOAD["http"][0]
    up = await client.upload_image(png, "harness_upload.png", overwrite=True)
    assert up == UploadedFile(**first["response_json"])
    sent = comfy.last("/upload/image")
    assert sent["data"] == png and sent["filename"] == "harness_upload.png"
    assert sent["fields"] == {"type": "input", "subfolder": "", "overwrite": "true"}
    assert sent["file_content_type"] == "image/png"
    # Same name without overwrite: ComfyUI renames, as recorded.
    second = await client.upload_image(png[:120], "harness_upload.png")
    assert second == UploadedFile(**UPLOAD["http"][1]["response_json"])
    assert comfy.last("/upload/image")["fields"]["overwrite"] == "false"


async def test_upload_image_streams_from_file_objects(fake: Any) -> None:
    comfy, client = fake
    payload = bytes(range(256)) * 1000  # 256 kB, several chunks

    async def agen() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 10_000):
            yield payload[i : i + 10_000]

    class AsyncFile:
        def __init__(self, data: bytes) -> None:
            self._buf = io.BytesIO(data)

        async def read(self, n: int = -1) -> bytes:
            return self._buf.read(n)

    up = await client.upload_image(agen(), "sub_upload.png", subfolder="harness", overwrite=True)
    assert up == UploadedFile(**UPLOAD["http"][2]["response_json"])
    assert comfy.last("/upload/image")["data"] == payload
    assert comfy.last("/upload/image")["fields"]["subfolder"] == "harness"

    await client.upload_image(io.BytesIO(payload), "sync.png")
    assert comfy.last("/upload/image")["data"] == payload
    await client.upload_image(AsyncFile(payload), 'we"ird\nname.png')
    assert comfy.last("/upload/image")["data"] == payload
    with pytest.raises(TypeError):
        await client.upload_image(12345, "x.png")


async def test_upload_mask(fake: Any) -> None:
    comfy, client = fake
    ref = {"filename": "harness_upload.png", "subfolder": "", "type": "input"}
    up = await client.upload_image(
        b"mask", "clipspace-mask.png", mask=True, original_ref=ref, subfolder="clipspace"
    )
    assert up.subfolder == "clipspace"
    sent = comfy.last("/upload/mask")
    assert json.loads(sent["fields"]["original_ref"]) == ref
    with pytest.raises(ValueError):
        await client.upload_image(b"mask", "m.png", mask=True)


def test_uploaded_file_input_value() -> None:
    assert UploadedFile("a.png", "", "input").as_input_value == "a.png"
    assert UploadedFile("a.png", "sub", "input").as_input_value == "sub/a.png"
    assert UploadedFile("a.png", "", "output").as_input_value == "a.png [output]"


# ------------------------------------------------------------------------------------------------
# Introspection


async def test_object_info(fake: Any) -> None:
    comfy, client = fake
    info = await client.object_info("EmptyImage")
    assert info == load("object_info_EmptyImage.json")
    assert info["EmptyImage"]["input"]["required"]["width"][0] == "INT"
    assert await client.object_info("NoSuchNode") == {}
    everything = await client.object_info()
    assert "KSampler" in everything
    assert comfy.last("/object_info")["method"] == "GET"


async def test_system_stats(fake: Any) -> None:
    _, client = fake
    stats = await client.system_stats()
    assert stats["system"]["comfyui_version"] == "0.3.64"


# ------------------------------------------------------------------------------------------------
# Transport failures


async def test_closed_port_is_backend_unavailable(closed_port: int) -> None:
    async with ComfyClient(f"http://127.0.0.1:{closed_port}", timeout=2.0) as client:
        for call in (
            client.get_queue(),
            client.system_stats(),
            client.interrupt("p"),
            client.queue_prompt({}, prompt_id="p", client_id=None),
        ):
            with pytest.raises(BackendUnavailable):
                await call
        with pytest.raises(BackendUnavailable):
            async with client.view("a.png", "", "output"):
                pass  # pragma: no cover


async def test_timeout_is_backend_unavailable(serve: Any) -> None:
    comfy = FakeComfy()
    comfy.delay = 1.0
    server = await serve(comfy.app)
    async with ComfyClient(server.url, timeout=0.2) as client:
        with pytest.raises(BackendUnavailable, match="timed out"):
            await client.get_queue()


@pytest.mark.parametrize(
    "status, exc",
    [
        (502, BackendUnavailable),
        (503, BackendUnavailable),
        (429, BackendUnavailable),
        (404, NotFound),
        (401, ComfyError),
    ],
)
async def test_status_mapping(fake: Any, status: int, exc: type) -> None:
    comfy, client = fake
    comfy.override["/system_stats"] = (status, "nope", "text/plain")
    with pytest.raises(exc) as info:
        await client.system_stats()
    assert type(info.value) is exc and info.value.status_code == status


async def test_non_json_answer_is_backend_unavailable(fake: Any) -> None:
    comfy, client = fake
    comfy.override["/system_stats"] = (200, "<html>proxy login</html>", "text/html")
    with pytest.raises(BackendUnavailable, match="malformed"):
        await client.system_stats()


async def test_base_url_with_prefix_and_mock_transport() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=load("queue_idle.json"))

    async with ComfyClient("http://comfy.internal/prefix/", transport=httpx.MockTransport(handler)) as client:
        await client.get_queue()
    assert str(seen[0].url) == "http://comfy.internal/prefix/queue"


async def test_prompt_id_is_escaped_in_history_path() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(200, json={})

    async with ComfyClient("http://h", transport=httpx.MockTransport(handler)) as client:
        assert await client.get_history("a/b?c") is None
        await client.object_info("Node/With Space")
    assert seen == ["/history/a%2Fb%3Fc", "/object_info/Node%2FWith%20Space"]


async def test_refused_connection_says_the_request_was_never_sent() -> None:
    from app.comfy import BackendUnavailable, ComfyClient

    port = free_port()
    async with ComfyClient(f"http://127.0.0.1:{port}", timeout=2) as client:
        with pytest.raises(BackendUnavailable) as info:
            await client.queue_prompt({"1": {}}, prompt_id="p", client_id="c")
    assert info.value.request_sent is False
