"""A bound on request body size, enforced before the body is read into memory."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.domain.errors import PROBLEM_BASE


class _TooLarge(Exception):
    pass


class BodySizeLimit:
    """`max_bytes` for every request; `paths` gives routes of their own (exact paths, e.g. the
    uploads route, whose files are spooled to disk by the multipart parser rather than held)."""

    def __init__(self, app: ASGIApp, max_bytes: int, paths: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.paths = paths or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.paths.get(scope.get("path", ""), self.max_bytes)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            await self._reject(send, max_bytes, scope.get("path", ""))
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send, max_bytes, scope.get("path", ""))

    async def _reject(self, send: Send, max_bytes: int, path: str) -> None:
        detail = f"The request body is larger than {max_bytes} bytes."
        if path.startswith("/api/v2/"):
            # Comfy API v2 routes answer in their own error envelope.
            content_type = b"application/json"
            body = json.dumps(
                {"error": {"code": "payload_too_large", "message": detail, "details": None}}
            ).encode()
        else:
            content_type = b"application/problem+json"
            body = json.dumps(
                {
                    "type": PROBLEM_BASE + "payload-too-large",
                    "title": "Payload too large",
                    "status": 413,
                    "detail": detail,
                }
            ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})
