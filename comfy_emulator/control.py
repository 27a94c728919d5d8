"""`/emulator/...`: the emulator's control API, for an emulator running as a process.

Each route calls the Emulator method of the same name (see emulator.py); bodies are JSON with
the method's arguments. These routes have no `/api` alias and are not affected by the HTTP
faults they inject.

    POST /emulator/fail_next          {"n": 1, "message": "..."}
    POST /emulator/fail_class         {"class_type": "KSampler", "message": "...", "count": null}
    POST /emulator/hang_next          {"n": 1}
    POST /emulator/drop_websockets    {"abrupt": true}
    POST /emulator/refuse_websockets  {"refuse": true}
    POST /emulator/stall_websockets   {"stall": true}
    POST /emulator/slow_responses     {"path_prefix": "/prompt", "seconds": 2.0}
    POST /emulator/error_responses    {"path_prefix": "/prompt", "status": 500, "count": null}
    POST /emulator/clear_faults
    POST /emulator/restart
    POST /emulator/set_models         {"folder": "checkpoints", "files": ["a.safetensors"]}
    POST /emulator/kill               {"revive_after": 1.5}   (answers first; SIGUSR1 also revives)
    GET  /emulator/stats              prompts_received, prompt_senders, executed_prompts, interrupts, websockets
"""

from __future__ import annotations

import asyncio
import platform
from collections.abc import Coroutine
from typing import Any, Protocol

from aiohttp import web

from .process import Process


class Controlled(Protocol):
    """The Emulator as these routes use it: a Protocol, so that this module does not import
    emulator.py (which imports this one)."""

    process: Process

    def fail_next(self, n: int = 1, message: str = ...) -> None: ...
    def fail_class(self, class_type: str, message: str | None = None, count: int | None = None) -> None: ...
    def hang_next(self, n: int = 1) -> None: ...
    def drop_websockets(self, abrupt: bool = True) -> None: ...
    def refuse_websockets(self, refuse: bool = True) -> None: ...
    def stall_websockets(self, stall: bool = True) -> None: ...
    def slow_responses(self, path_prefix: str, seconds: float) -> None: ...
    def error_responses(self, path_prefix: str, status: int = 500, count: int | None = None) -> None: ...
    def clear_faults(self) -> None: ...
    def set_models(self, folder: str, files: list[str]) -> None: ...
    async def restart(self) -> None: ...
    async def kill(self) -> None: ...
    async def revive(self) -> None: ...
    def in_background(self, coro: Coroutine[Any, Any, None]) -> None: ...


def control_routes(emu: Controlled) -> web.RouteTableDef:
    routes = web.RouteTableDef()

    async def body(request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            data = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="body must be JSON") from None
        return data if isinstance(data, dict) else {}

    def ok(**extra: Any) -> web.Response:
        return web.json_response({"ok": True, **extra})

    @routes.post("/emulator/fail_next")
    async def fail_next(request: web.Request) -> web.Response:
        b = await body(request)
        emu.fail_next(int(b.get("n", 1)), **({"message": b["message"]} if "message" in b else {}))
        return ok()

    @routes.post("/emulator/fail_class")
    async def fail_class(request: web.Request) -> web.Response:
        b = await body(request)
        if "class_type" not in b:
            raise web.HTTPBadRequest(text="class_type is required")
        emu.fail_class(b["class_type"], message=b.get("message"), count=b.get("count"))
        return ok()

    @routes.post("/emulator/hang_next")
    async def hang_next(request: web.Request) -> web.Response:
        emu.hang_next(int((await body(request)).get("n", 1)))
        return ok()

    @routes.post("/emulator/drop_websockets")
    async def drop_websockets(request: web.Request) -> web.Response:
        emu.drop_websockets(abrupt=bool((await body(request)).get("abrupt", True)))
        return ok()

    @routes.post("/emulator/refuse_websockets")
    async def refuse_websockets(request: web.Request) -> web.Response:
        emu.refuse_websockets(bool((await body(request)).get("refuse", True)))
        return ok()

    @routes.post("/emulator/stall_websockets")
    async def stall_websockets(request: web.Request) -> web.Response:
        emu.stall_websockets(bool((await body(request)).get("stall", True)))
        return ok()

    @routes.post("/emulator/slow_responses")
    async def slow_responses(request: web.Request) -> web.Response:
        b = await body(request)
        emu.slow_responses(str(b.get("path_prefix", "/")), float(b.get("seconds", 0)))
        return ok()

    @routes.post("/emulator/error_responses")
    async def error_responses(request: web.Request) -> web.Response:
        b = await body(request)
        count = b.get("count")
        emu.error_responses(
            str(b.get("path_prefix", "/")), int(b.get("status", 500)), None if count is None else int(count)
        )
        return ok()

    @routes.post("/emulator/clear_faults")
    async def clear_faults(request: web.Request) -> web.Response:
        emu.clear_faults()
        return ok()

    @routes.post("/emulator/set_models")
    async def set_models(request: web.Request) -> web.Response:
        b = await body(request)
        files = b.get("files")
        if (
            not isinstance(b.get("folder"), str)
            or not isinstance(files, list)
            or not all(isinstance(f, str) for f in files)
        ):
            raise web.HTTPBadRequest(text="folder (a string) and files (a list of strings) are required")
        emu.set_models(b["folder"], files)
        return ok()

    @routes.post("/emulator/restart")
    async def restart(request: web.Request) -> web.Response:
        await emu.restart()
        return ok()

    @routes.post("/emulator/kill")
    async def kill(request: web.Request) -> web.Response:
        """Answers first, then stops listening; `revive_after` (seconds) brings it back."""
        revive_after = (await body(request)).get("revive_after")

        async def later() -> None:
            await asyncio.sleep(0.05)
            await emu.kill()
            if revive_after is not None:
                await asyncio.sleep(float(revive_after))
                await emu.revive()

        emu.in_background(later())
        return ok()

    @routes.get("/emulator/stats")
    async def stats(request: web.Request) -> web.Response:
        process = emu.process
        parts = process.parts
        return web.json_response(
            {
                "prompts_received": parts.prompts_received,
                "prompt_senders": parts.prompt_senders,
                "executed_prompts": parts.executed_prompts,
                "interrupts": parts.interrupts,
                "websockets": list(parts.hub.sockets),
                "queue_remaining": process.state.queue.tasks_remaining(),
                "python": platform.python_version(),
            }
        )

    return routes
