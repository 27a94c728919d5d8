"""A gateway whose dispatcher the test drives by hand: its rounds, and the messages its tracker
reads, one at a time, with no timing involved.

The gateway is the real app (database, event log, storage) with `run_dispatcher=False`: its
dispatcher is built with one link to an in-process emulator but follows no socket and runs no
loop. The test runs `round()` (one `Dispatcher.run_once`) and `feed(...)` (messages handed to the
tracker as its socket reader would). What the tracker spawns (database writes, collecting outputs)
is queued and run to completion before `feed` returns, so each message's effect can be asserted
right after it.
"""

from __future__ import annotations

import json
import struct
from collections import deque
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.comfy.messages import Executed, parse_binary, parse_text
from app.comfy.websocket import Connected
from comfy_emulator import Emulator
from tests.integration.conftest import Gateway

RECORDINGS = Path(__file__).parents[1] / "data" / "recordings"

#: The recorded EmptyImage -> ImageBlur -> SaveImage prompt (scenario_basic_blur.json).
BLUR_PROMPT: dict[str, Any] = json.loads((RECORDINGS / "scenario_basic_blur.json").read_text())["http"][0][
    "request_json"
]["prompt"]


def recorded(scenario: str, prompt_id: str | None, *, index: int = 0) -> list[Any]:
    """A scenario's frames, parsed as the socket reader parses them, as if they were about
    `prompt_id`: the id of the recording's `index`-th prompt (in order of appearance) is replaced
    by it (None: kept). Frames about the recording's other prompts keep their own ids. Binary
    frames are rebuilt from their recorded headers (the image bytes are not recorded: stand-ins of
    the recorded length, with the recorded magic number)."""
    frames = json.loads((RECORDINGS / f"{scenario}.json").read_text())["ws_messages"]
    texts = [f["json"] for f in frames if "json" in f]
    ids = list(dict.fromkeys(t["data"]["prompt_id"] for t in texts if t["data"].get("prompt_id")))
    ours = ids[index] if prompt_id is not None else None
    messages = []
    for frame in frames:
        if "json" in frame:
            raw = json.dumps(frame["json"])
            messages.append(parse_text(raw.replace(ours, prompt_id) if ours and prompt_id else raw))
        else:
            messages.append(parse_binary(_binary(frame["decoded"], ours, prompt_id)))
    return messages


def _binary(decoded: dict[str, Any], ours: str | None, prompt_id: str | None) -> bytes:
    u32 = struct.Struct(">I").pack
    if decoded["event_type"] == 3:
        node = decoded["node_id"].encode()
        return u32(3) + u32(len(node)) + node + decoded["text"].encode()
    image = bytes.fromhex(decoded["image_magic_hex"]).ljust(decoded["image_bytes"], b"\0")
    if decoded["event_type"] == 1:
        return u32(1) + u32(1 if decoded["image_type"] == "JPEG" else 2) + image
    meta = dict(decoded["metadata"])
    if ours is not None and meta.get("prompt_id") == ours:
        meta["prompt_id"] = prompt_id
    encoded = json.dumps(meta).encode()
    return u32(4) + u32(len(encoded)) + encoded + image


class Rig:
    def __init__(self, gw: Gateway, emu: Emulator) -> None:
        self.gw = gw
        self.emu = emu
        self.dispatcher = gw.dispatcher
        (self.link,) = self.dispatcher.links
        self.spawned: deque[Coroutine[Any, Any, Any]] = deque()
        # Whose each job is (a job is only visible to its owner).
        self.owner: dict[str, dict[str, str]] = {}
        # The one seam for background work (every part spawns through the dispatcher's task
        # supervisor): queued here instead of run as tasks.
        self.dispatcher.tasks.spawn = lambda coro, name: self.spawned.append(coro)  # type: ignore[method-assign]

    async def settle(self) -> None:
        """Run what was spawned, and what that spawned, to the end, in order."""
        while self.spawned:
            await self.spawned.popleft()

    async def feed(self, *messages: object, settle: bool = True) -> None:
        """Hand messages to the tracker; `settle=False` leaves what they spawned queued, to see
        what the socket reader itself did (it never waits for the database)."""
        for message in messages:
            await self.dispatcher.tracker.handle(self.link, message)
            if settle:
                await self.settle()

    async def connect(self) -> None:
        """The backend's socket comes up: the link reads its node definitions and is ready."""
        await self.feed(Connected(sid=self.link.client_id, attempt=1))
        assert self.link.healthy and self.link.capabilities is not None

    async def round(self) -> int:
        """One dispatcher round; returns how many prompts it sent."""
        sent = await self.dispatcher.run_once()
        await self.settle()
        return sent

    def prompt_of(self, job_id: str) -> str | None:
        """The prompt id the link follows for a job (sent or claimed in reserve)."""
        return next((pid for pid, f in self.link.inflight.items() if f.job_id == job_id), None)

    async def job(self, job_id: str) -> dict[str, Any]:
        """The job as its owner sees it through the API."""
        return await self.gw.job(job_id, self.owner[job_id])

    async def as_written(self, messages: list[Any], prompt_id: str) -> list[Any]:
        """`messages` with the outputs their `executed` messages name for `prompt_id` replaced by
        the files the emulator wrote for it (a recording names the real ComfyUI's files). Call
        once the emulator ran the prompt."""
        entry = await self.link.client.get_history(prompt_id)
        assert entry is not None
        return [
            replace(m, output=entry.outputs.get(m.node, m.output))
            if isinstance(m, Executed) and m.prompt_id == prompt_id
            else m
            for m in messages
        ]


async def start_rig(emulator: Emulator, make_settings: Any, gateway_factory: Any, **overrides: Any) -> Rig:
    settings = {
        "comfyui_urls": [emulator.base_url],
        "run_dispatcher": False,
        "max_inflight_per_backend": 2,
        # Every progress message is written to the row, so that none depends on timing.
        "progress_persist_seconds": 0,
        **overrides,
    }
    return Rig(await gateway_factory(make_settings(**settings)), emulator)


async def submit(rig: Rig, headers: dict[str, str], workflow: dict[str, Any] | None = None) -> str:
    resp = await rig.gw.generate({"workflow": workflow or BLUR_PROMPT}, headers=headers)
    assert resp.status_code in (200, 201, 202), resp.text
    job_id = resp.json()["id"]
    rig.owner[job_id] = headers
    return job_id


#: Limits for the users of these tests: raw workflows, and no running cap in the way.
USER = {"allow_raw_workflows": True, "max_running": 100}
