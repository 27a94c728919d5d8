"""A lean HTTP/1.1 client for benchmarks: keep-alive connections over asyncio streams, requests
written as bytes, responses parsed just enough (status, headers, Content-Length or chunked body).

Why not httpx: its request and response objects cost the client more CPU per request than a
small server spends answering it, so a benchmark that drives a server with it measures the client.
A good ComfyUI client (one WebSocket, keep-alive, raw requests) costs about this much.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit

#: Idle connections older than this are not reused.
IDLE_SECONDS = 3.0


class Response:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def ok(self) -> Response:
        if not 200 <= self.status < 300:
            raise RuntimeError(f"HTTP {self.status}: {self.body[:300]!r}")
        return self


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.used = time.monotonic()

    async def request(self, head: bytes, body: bytes) -> Response:
        self.writer.write(head + body)
        reader = self.reader
        status_line = await reader.readuntil(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        headers: dict[str, str] = {}
        while True:
            line = await reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            data = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    break
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            data = b"".join(parts)
        else:
            data = b""
        return Response(status, headers, data)


class LeanClient:
    """A pool of up to `size` keep-alive connections to one server."""

    def __init__(self, base: str, size: int = 8, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.size = size
        self._idle: list[_Conn] = []
        self._open = 0
        self._free = asyncio.Condition()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._common = f"Host: {self.host}:{self.port}\r\n{extra}".encode()

    async def _take(self) -> _Conn:
        async with self._free:
            while not self._idle and self._open >= self.size:
                await self._free.wait()
            while self._idle:
                conn = self._idle.pop()
                # Servers close keep-alive connections idle for a while (uvicorn: 5 s).
                if time.monotonic() - conn.used < IDLE_SECONDS:
                    return conn
                conn.writer.close()
                self._open -= 1
            self._open += 1
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 24)
        except BaseException:
            async with self._free:
                self._open -= 1
                self._free.notify()
            raise
        return _Conn(reader, writer)

    async def _give(self, conn: _Conn | None) -> None:
        async with self._free:
            if conn is None:
                self._open -= 1
            else:
                conn.used = time.monotonic()
                self._idle.append(conn)
            self._free.notify()

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str | None = None
    ) -> Response:
        head = f"{method} {path} HTTP/1.1\r\n".encode() + self._common
        if body or method in ("POST", "PUT", "PATCH"):
            head += f"Content-Length: {len(body)}\r\n".encode()
            if content_type:
                head += f"Content-Type: {content_type}\r\n".encode()
        head += b"\r\n"
        conn = await self._take()
        try:
            resp = await conn.request(head, body)
        except BaseException:
            conn.writer.close()
            await self._give(None)
            raise
        if resp.headers.get("connection", "").lower() == "close":
            conn.writer.close()
            await self._give(None)
        else:
            await self._give(conn)
        return resp

    async def get(self, path: str) -> Response:
        return await self.request("GET", path)

    async def post_json(self, path: str, payload: Any) -> Response:
        return await self.request("POST", path, json.dumps(payload).encode(), "application/json")

    async def aclose(self) -> None:
        for conn in self._idle:
            conn.writer.close()
        self._idle.clear()
