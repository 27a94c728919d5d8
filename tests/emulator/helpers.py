"""Test helpers: a recording WebSocket client, and the normalization used to compare the
emulator's traffic with the recordings of the real ComfyUI.

Normalization replaces only what legitimately differs between two runs (prompt ids, `number`
values, timestamps, generated sids, output file counters, tracebacks, tensor dumps, JPEG sizes)
by placeholders that keep identity: the n-th distinct prompt id becomes `<pid1>`, ..., so a
message that names the wrong prompt, or a cached run that reports a different file, still fails.
Everything else must be equal.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from comfy_emulator.previews import decode_frame

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings"
CLIENT_A = "harness-client-a"
CLIENT_B = "harness-client-b"
CLIENT_FLAGS = "harness-client-flags"
FEATURE_FLAGS_MSG = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}


def recording(name: str) -> Any:
    return json.loads((RECORDINGS / name).read_text(encoding="utf-8"))


# -- frames -------------------------------------------------------------------------------------


def frame_type(frame: dict[str, Any]) -> str:
    """A recorded-style frame (`{"frame": "text", "json": ...}` / `{"frame": "binary", ...}`)
    -> the label used in `ws_types_in_order`."""
    if frame["frame"] == "text":
        return frame["json"]["type"]
    return "binary:" + frame["decoded"]["event_name"]


def types(frames: list[dict[str, Any]]) -> list[str]:
    return [frame_type(f) for f in frames]


class WsClient:
    """A socket that records every frame in the recordings' format."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self.closed = False
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(
        cls,
        session: aiohttp.ClientSession,
        base_url: str,
        client_id: str | None = None,
        *,
        flags: bool = False,
        **kw: Any,
    ) -> WsClient:
        url = base_url.replace("http://", "ws://") + "/ws" + (f"?clientId={client_id}" if client_id else "")
        ws = await session.ws_connect(url, **kw)
        if flags:
            await ws.send_str(json.dumps(FEATURE_FLAGS_MSG))
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self.frames.append({"frame": "text", "json": json.loads(msg.data)})
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    self.frames.append(
                        {
                            "frame": "binary",
                            "length": len(msg.data),
                            "first8_hex": msg.data[:8].hex(),
                            "decoded": decode_frame(msg.data),
                        }
                    )
                self._changed.set()
        finally:
            self.closed = True
            self._changed.set()

    async def wait_for(
        self, pred: Callable[[list[dict[str, Any]]], bool], timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        async def loop() -> None:
            while not pred(self.frames):
                if self.closed:
                    raise AssertionError(f"socket closed while waiting; got {types(self.frames)}")
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), timeout)
        return self.frames

    async def wait_message(
        self, type_: str, timeout: float = 10.0, start: int = 0, **data: Any
    ) -> dict[str, Any]:
        """The first text message of `type_` (from index `start`) whose data has these values."""

        def find(frames: list[dict[str, Any]]) -> dict[str, Any] | None:
            for f in frames[start:]:
                if (
                    f["frame"] == "text"
                    and f["json"]["type"] == type_
                    and all(f["json"]["data"].get(k) == v for k, v in data.items())
                ):
                    return f
            return None

        await self.wait_for(lambda fr: find(fr) is not None, timeout)
        return find(self.frames)  # type: ignore[return-value]

    async def wait_done(self, prompt_id: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        await self.wait_message("executing", timeout, node=None, prompt_id=prompt_id)
        return self.frames

    async def settle(self, seconds: float = 0.15) -> list[dict[str, Any]]:
        """Wait a little longer to catch anything that should NOT arrive."""
        await asyncio.sleep(seconds)
        return self.frames

    def since(self, index: int) -> list[dict[str, Any]]:
        return self.frames[index:]

    async def close(self) -> None:
        await self.ws.close()
        self._task.cancel()


# -- normalization ------------------------------------------------------------------------------


_COUNTER = re.compile(r"^(?P<prefix>.*)_(?P<n>\d{5})_\.png$")
_TEMP = re.compile(r"^ComfyUI_temp_[a-z]{5}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


class Normalizer:
    """Replaces run-specific values by stable placeholders (see the module docstring)."""

    def __init__(self, keep_sids: tuple[str, ...] = (CLIENT_A, CLIENT_B, CLIENT_FLAGS)) -> None:
        self.pids: dict[str, str] = {}
        self.numbers: dict[Any, str] = {}
        self.files: dict[str, str] = {}
        self.keep_sids = keep_sids

    def pid(self, value: str) -> str:
        return self.pids.setdefault(value, f"<pid{len(self.pids) + 1}>")

    def number(self, value: Any) -> str:
        assert isinstance(value, (int, float)) and not isinstance(value, bool), value
        return self.numbers.setdefault(value, f"<number{len(self.numbers) + 1}>")

    def filename(self, value: str) -> str:
        m = _COUNTER.match(value)
        assert m, f"not a ComfyUI output name: {value!r}"
        prefix = m.group("prefix")
        if _TEMP.match(prefix):
            prefix = "ComfyUI_temp_<rand>"
        return self.files.setdefault(value, f"{prefix}_<file{len(self.files) + 1}>_.png")

    def __call__(self, obj: Any, key: str | None = None) -> Any:
        if isinstance(obj, dict):
            return {k: self._value(k, v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self(v) for v in obj]
        return obj

    def _value(self, key: str, v: Any) -> Any:
        if key == "prompt_id" and isinstance(v, str):
            return self.pid(v)
        if key == "timestamp":
            assert isinstance(v, int) and v > 1_600_000_000_000, v
            return "<timestamp>"
        if key == "sid" and isinstance(v, str) and v not in self.keep_sids:
            assert _HEX32.match(v), v
            return "<generated sid>"
        if key == "number":
            return self.number(v)
        if key == "filename" and isinstance(v, str):
            return self.filename(v)
        if key == "traceback":
            assert (
                isinstance(v, list) and v and all(isinstance(s, str) and s.startswith('  File "') for s in v)
            ), v
            return "<traceback>"
        if key == "current_inputs":
            assert isinstance(v, dict)
            return {k: ["<value>" if isinstance(x, str) else x for x in vals] for k, vals in v.items()}
        if key == "image_bytes":
            assert isinstance(v, int) and v > 100, v
            return "<bytes>"
        return self(v)

    def queue_item(self, item: list[Any]) -> list[Any]:
        """`[number, prompt_id, prompt, extra_data, outputs]`."""
        assert isinstance(item, list) and len(item) == 5, item
        return [self.number(item[0]), self.pid(item[1]), self(item[2]), self(item[3]), item[4]]

    def history(self, body: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for pid, entry in body.items():
            entry = dict(entry)
            entry["prompt"] = self.queue_item(entry["prompt"])
            out[self.pid(pid)] = self(entry)
        return out

    def queue(self, body: dict[str, Any]) -> dict[str, Any]:
        return {k: [self.queue_item(i) for i in v] for k, v in body.items()}

    def frames(self, frames: list[dict[str, Any]]) -> list[Any]:
        out = []
        for f in frames:
            if f["frame"] == "text":
                out.append(self(f["json"]))
            else:
                out.append({"binary": self(f["decoded"]), "first4_hex": f["first8_hex"][:8]})
        return out


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Where two JSON values differ, comparing types too (1 vs 1.0, 1 vs True) and key order."""
    if type(a) is not type(b):
        return f"{path or '<root>'}: {a!r} ({type(a).__name__}) vs {b!r} ({type(b).__name__})"
    if isinstance(a, dict):
        if list(a) != list(b):
            return f"{path or '<root>'}: keys {list(a)} vs {list(b)}"
        for k in a:
            d = first_difference(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path or '<root>'}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{path or '<root>'}: {a!r} vs {b!r}"


def assert_strictly_equal(got: Any, recorded: Any, what: str = "") -> None:
    d = first_difference(got, recorded)
    assert d is None, f"{what}: emulator vs recording differ at {d}\nrecorded: {recorded}\nemulator: {got}"


def assert_same_frames(recorded: list[dict[str, Any]], got: list[dict[str, Any]], what: str = "") -> None:
    """Same types in the same order, then the same normalized content (types and key order
    included), message by message."""
    assert types(got) == types(recorded), (
        f"{what}: message types differ\nrecorded: {types(recorded)}\nemulator: {types(got)}"
    )
    nr, ng = Normalizer(), Normalizer()
    for i, (r, g) in enumerate(zip(nr.frames(recorded), ng.frames(got), strict=True)):
        assert_strictly_equal(g, r, f"{what}: message {i} ({types(recorded)[i]})")


def shape(obj: Any) -> Any:
    """Keys (recursively) and JSON types of the leaves."""
    if isinstance(obj, dict):
        return {k: shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [shape(v) for v in obj]
    return type(obj).__name__
