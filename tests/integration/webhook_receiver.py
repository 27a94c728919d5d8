"""A real webhook receiver on a loopback port (aiohttp), scripted per path: the statuses it answers,
in order, then 200. It records every request it gets, exactly as it came."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web


@dataclass(frozen=True, slots=True)
class Received:
    path: str
    headers: dict[str, str]
    body: str
    answered: int


class Receiver:
    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.received: list[Received] = []
        self._script: dict[str, deque[tuple[int, dict[str, str]]]] = defaultdict(deque)
        self._runner: web.AppRunner | None = None
        self._holds: dict[str, asyncio.Event] = {}

    def answer(self, path: str, *statuses: int, headers: dict[str, str] | None = None) -> None:
        """The next requests to `path` get these statuses, in order; then 200."""
        self._script[path].extend((status, headers or {}) for status in statuses)

    def hold(self, path: str) -> asyncio.Event:
        """Requests to `path` get no answer until the returned event is set (a hanging receiver)."""
        return self._holds.setdefault(path, asyncio.Event())

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        script = self._script[request.path]
        status, headers = script.popleft() if script else (200, {})
        self.received.append(Received(request.path, dict(request.headers), body, status))
        if request.path in self._holds:
            await self._holds[request.path].wait()
        return web.Response(status=status, headers=headers, text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(
        self, condition: Callable[[], bool], timeout: float = 30, what: str = "requests"
    ) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"the receiver never got the expected {what}: {self.received}")
            await asyncio.sleep(0.02)
