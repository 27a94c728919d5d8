"""Fixtures for the ComfyUI client tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from tests.ports import free_port

from .helpers import LocalServer


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    """`await serve(app)` -> a started LocalServer, stopped after the test."""
    servers: list[LocalServer] = []

    async def _serve(app: web.Application, port: int = 0) -> LocalServer:
        server = await LocalServer(app).start(port)
        servers.append(server)
        return server

    yield _serve
    for server in servers:
        await server.stop()


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    return free_port()
