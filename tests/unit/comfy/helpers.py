"""Helpers for the ComfyUI client tests: the recordings and tiny local aiohttp servers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

RECORDINGS = Path(__file__).resolve().parents[2] / "data" / "recordings"


def load(name: str) -> Any:
    return json.loads((RECORDINGS / name).read_text())


def iter_frames(obj: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every recorded WebSocket frame (a dict with a `frame` key), wherever it sits in a file."""
    if isinstance(obj, dict):
        if "frame" in obj and ("json" in obj or "decoded" in obj):
            yield where, obj
            return
        for key, value in obj.items():
            yield from iter_frames(value, f"{where}/{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from iter_frames(value, f"{where}/{i}")


class LocalServer:
    """An aiohttp app served on 127.0.0.1 with an ephemeral port."""

    def __init__(self, app: web.Application):
        self.app = app
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        self.port = 0

    async def start(self, port: int = 0) -> LocalServer:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        await self.runner.cleanup()
