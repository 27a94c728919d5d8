"""`/ws`: the open sockets, who receives what, and the socket faults.

As in ComfyUI, a socket is registered under its `clientId` (or a made-up hex id), a message is
sent either to one sid or, with sid None, to every socket, and a message for a sid without a
socket is dropped. Unlike ComfyUI, each socket has its own outgoing queue and writer task, so a
client that stops reading delays only itself, and the executor never waits for a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from .config import SERVER_FEATURES

logger = logging.getLogger(__name__)


class Connection:
    __slots__ = ("ws", "sid", "transport", "feature_flags", "pending", "wake", "writer", "closed")

    def __init__(self, ws: web.WebSocketResponse, sid: str, transport: asyncio.BaseTransport | None) -> None:
        self.ws = ws
        self.sid = sid
        self.transport = transport
        self.feature_flags: dict[str, Any] = {}
        self.pending: deque[str | bytes] = deque()
        self.wake = asyncio.Event()
        self.writer: asyncio.Task[None] | None = None
        self.closed = False

    def push(self, item: str | bytes) -> None:
        if not self.closed:
            self.pending.append(item)
            self.wake.set()

    def abort(self) -> None:
        """Drop the TCP connection without a close frame, as a crashed server or a broken
        network does (the client sees 1006)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()  # type: ignore[attr-defined]  # a socket transport (BaseTransport lacks it)
        if self.writer is not None:
            self.writer.cancel()


class SocketHub:
    def __init__(self) -> None:
        self.sockets: dict[str, Connection] = {}
        #: Every open connection, including ones replaced by a newer socket with the same id.
        self.connections: set[Connection] = set()
        self.refuse = False
        self._unstalled = asyncio.Event()
        self._unstalled.set()

    # -- sending ------------------------------------------------------------------------------

    def send_json(self, event: str, data: Any, sid: str | None = None) -> None:
        self._send(json.dumps({"type": event, "data": data}), sid)

    def send_bytes(self, frame: bytes, sid: str | None = None) -> None:
        self._send(frame, sid)

    def _send(self, item: str | bytes, sid: str | None) -> None:
        if sid is None:
            for conn in self.sockets.values():
                conn.push(item)
        else:
            conn = self.sockets.get(sid)
            if conn is not None:
                conn.push(item)

    def supports(self, sid: str | None, feature: str) -> bool:
        """ComfyUI's feature_flags.supports_feature: only a known socket that announced it."""
        if sid is None:
            return False
        conn = self.sockets.get(sid)
        return conn is not None and conn.feature_flags.get(feature) is True

    # -- faults -------------------------------------------------------------------------------

    @property
    def stalled(self) -> bool:
        return not self._unstalled.is_set()

    def stall(self, stalled: bool) -> None:
        """While stalled, sockets stay open but nothing is sent (it is kept for later) and pings
        get no pong, like a server whose event loop is stuck."""
        if stalled:
            self._unstalled.clear()
        else:
            self._unstalled.set()

    def drop_all(self, abrupt: bool = True) -> None:
        conns = list(self.connections)
        self.sockets.clear()
        self.connections.clear()
        for conn in conns:
            if abrupt:
                conn.abort()
            else:
                conn.closed = True
                asyncio.get_running_loop().create_task(self._close(conn))

    async def close_all(self, timeout: float = 1.0) -> None:
        """A graceful shutdown: close frames (1001) to everyone, as aiohttp sends on exit."""
        conns = list(self.connections)
        self.sockets.clear()
        self.connections.clear()
        for conn in conns:
            conn.closed = True
        if conns:
            await asyncio.wait([asyncio.ensure_future(self._close(c)) for c in conns], timeout=timeout)
        for conn in conns:
            if not conn.ws.closed:
                conn.abort()

    @staticmethod
    async def _close(conn: Connection) -> None:
        if conn.writer is not None:
            conn.writer.cancel()
        with contextlib.suppress(Exception):
            await conn.ws.close(code=1001, message=b"server going away")

    # -- the handler --------------------------------------------------------------------------

    async def handle(
        self,
        request: web.Request,
        status: Callable[[], dict[str, Any]],
        on_connect: Callable[[str], None],
    ) -> web.StreamResponse:
        if self.refuse:
            return web.Response(status=503, text="503: WebSocket refused (emulator fault)")
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "")
        if sid:
            # A second socket with the same id replaces the first, which stays open but gets
            # nothing more (as in ComfyUI).
            old = self.sockets.pop(sid, None)
            if old is not None:
                old.closed = True
        else:
            sid = uuid.uuid4().hex
        conn = Connection(ws, sid, request.transport)
        self.sockets[sid] = conn
        self.connections.add(conn)
        conn.writer = asyncio.get_running_loop().create_task(self._writer(conn))
        self.send_json("status", {"status": status(), "sid": sid}, sid)
        on_connect(sid)
        first = True
        try:
            async for msg in ws:
                if msg.type == WSMsgType.PING:
                    if not self.stalled:
                        with contextlib.suppress(Exception):
                            await ws.pong(msg.data)
                elif msg.type == WSMsgType.TEXT:
                    try:
                        data = json.loads(msg.data)
                        if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                            flags = data.get("data", {})
                            conn.feature_flags = flags if isinstance(flags, dict) else {}
                            self.send_json("feature_flags", dict(SERVER_FEATURES), sid)
                    except ValueError:
                        logger.warning("invalid JSON from client %s", sid)
                    first = False
        finally:
            if self.sockets.get(sid) is conn:
                del self.sockets[sid]
            self.connections.discard(conn)
            conn.closed = True
            if conn.writer is not None:
                conn.writer.cancel()
        return ws

    async def _writer(self, conn: Connection) -> None:
        ws = conn.ws
        try:
            while True:
                if not conn.pending:
                    conn.wake.clear()
                    await conn.wake.wait()
                    continue
                if not self._unstalled.is_set():
                    await self._unstalled.wait()
                    continue
                item = conn.pending.popleft()
                if isinstance(item, str):
                    await ws.send_str(item)
                else:
                    await ws.send_bytes(item)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 — the peer went away: the reader loop cleans up
            conn.closed = True
            conn.pending.clear()
