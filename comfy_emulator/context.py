"""What a running prompt and its nodes see: the interrupt signal, the per-prompt run state,
and NodeContext, the handle node implementations use (sleep, progress, text, folders).

`NodeContext.progress` is ComfyUI's progress hook: it checks for an interrupt, sends
`progress_state`, then the preview as binary event 4 when the prompt's client announced
`supports_preview_metadata`, then `progress`, then the preview as event 1 otherwise (a prompt
without client sends event 1 to every socket). The order is the recorded one.
"""

from __future__ import annotations

import asyncio
import copy
import time
from typing import TYPE_CHECKING, Any

from PIL import Image

from .faults import JobFault
from .previews import (
    MAX_PREVIEW_RESOLUTION,
    encode_image,
    preview_frame,
    preview_with_metadata_frame,
    text_frame,
)
from .progress import ProgressRegistry

if TYPE_CHECKING:
    from .parts import Parts


class Interrupted(Exception):
    """ComfyUI's InterruptProcessingException."""


class InterruptSignal:
    """ComfyUI's global interrupt flag, plus an event so sleeping steps wake up at once."""

    def __init__(self) -> None:
        self.flag = False
        self.event = asyncio.Event()

    def set(self) -> None:
        self.flag = True
        self.event.set()

    def reset(self) -> None:
        self.flag = False
        self.event.clear()

    def check(self) -> None:
        if self.flag:
            self.reset()
            raise Interrupted()

    async def sleep(self, seconds: float) -> None:
        if self.flag:
            return
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        try:
            await asyncio.wait_for(self.event.wait(), seconds)
        except TimeoutError:
            pass

    async def wait(self) -> None:
        await self.event.wait()


class NodeContext:
    """What a node implementation can do (see nodes.py)."""

    __slots__ = ("run", "node_id", "class_type")

    def __init__(self, run: PromptRun, node_id: str, class_type: str) -> None:
        self.run = run
        self.node_id = node_id
        self.class_type = class_type

    @property
    def config(self) -> Any:
        return self.run.parts.config

    @property
    def folders(self) -> Any:
        return self.run.parts.folders

    @property
    def extra_data(self) -> dict[str, Any]:
        return self.run.extra_data

    @property
    def png_prompt(self) -> dict[str, Any]:
        return self.run.png_prompt()

    def check_interrupt(self) -> None:
        self.run.interrupt.check()

    async def sleep(self, seconds: float) -> None:
        await self.run.interrupt.sleep(seconds)

    def send_text(self, text: str) -> None:
        """PromptServer.send_progress_text without a sid: every socket gets it."""
        self.run.parts.hub.send_bytes(text_frame(self.node_id, text), None)

    async def progress(
        self,
        value: Any,
        total: Any,
        preview: tuple[str, Image.Image] | None = None,
        max_size: int = MAX_PREVIEW_RESOLUTION,
    ) -> None:
        """ComfyUI's progress hook: interrupt check, progress_state, [event 4], progress, [event 1]."""
        run = self.run
        run.interrupt.check()
        run.progress.update(self.node_id, value, total)
        hub, client_id = run.parts.hub, run.client_id
        data = None
        with_metadata = hub.supports(client_id, "supports_preview_metadata")
        if preview is not None:
            fmt, image = preview
            data = encode_image(image, fmt, max_size)
            if with_metadata:
                meta = {
                    "node_id": self.node_id,
                    "prompt_id": run.prompt_id,
                    "display_node_id": self.node_id,
                    "parent_node_id": None,
                    "real_node_id": self.node_id,
                }
                hub.send_bytes(preview_with_metadata_frame(data, meta, fmt), client_id)
        hub.send_json(
            "progress",
            {"value": value, "max": total, "prompt_id": run.prompt_id, "node": self.node_id},
            client_id,
        )
        if run.parts.config.progress_hook is not None:
            run.parts.config.progress_hook(run.prompt_id, self.node_id, value, total, time.time())
        if data is not None and not with_metadata:
            hub.send_bytes(preview_frame(data, preview[0]), client_id)  # type: ignore[index]


class PromptRun:
    """The state of one prompt's execution."""

    def __init__(
        self,
        parts: Parts,
        interrupt: InterruptSignal,
        prompt: dict[str, Any],
        prompt_id: str,
        extra_data: dict[str, Any],
        fault: JobFault | None,
    ) -> None:
        self.parts = parts
        self.interrupt = interrupt
        self.prompt = prompt
        self.prompt_id = prompt_id
        self.extra_data = extra_data
        self.client_id: str | None = extra_data.get("client_id")
        self.fault = fault
        self.fault_fired = False
        self.hang_on_sampler = False
        self.progress = ProgressRegistry(prompt_id, self._send_progress_state)
        self.outputs: dict[str, tuple[Any, ...]] = {}
        self.ui_outputs: dict[str, dict[str, Any]] = {}
        self.executed: dict[str, None] = {}
        self.is_changed: dict[str, Any] = {}
        self._png_prompt: dict[str, Any] | None = None

    def _send_progress_state(self, event: str, data: Any) -> None:
        self.parts.hub.send_json(event, data, self.client_id)

    def png_prompt(self) -> dict[str, Any]:
        """The prompt SaveImage writes into the PNG: with the IS_CHANGED values, like ComfyUI."""
        if self._png_prompt is None:
            if any(v is not False for v in self.is_changed.values()):
                p = copy.deepcopy(self.prompt)
                for node_id, value in self.is_changed.items():
                    if value is not False:
                        p[node_id]["is_changed"] = value
                self._png_prompt = p
            else:
                self._png_prompt = self.prompt
        return self._png_prompt
