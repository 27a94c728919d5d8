"""The RateLimit header fields on every response to a rate-limited user.

The auth dependency (app/api/deps.py) decides and records the fields in the request's state; this
middleware adds them to the response, whatever the route returns (JSON, a file, an event stream).
Refused requests carry their own fields, with `Retry-After`, in the 429 problem.
"""

from __future__ import annotations

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_STATE_KEY = "ratelimit_headers"


def set_ratelimit_headers(request: Request, headers: dict[str, str]) -> None:
    setattr(request.state, _STATE_KEY, headers)


class RateLimitHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The request's state lives in this dict; make sure it exists before the app shares it.
        state = scope.setdefault("state", {})

        async def send_with_fields(message: Message) -> None:
            if message["type"] == "http.response.start":
                fields = state.get(_STATE_KEY)
                if fields:
                    present = {name.lower() for name, _ in message.get("headers", [])}
                    extra = [
                        (k.lower().encode(), v.encode())
                        for k, v in fields.items()
                        if k.lower().encode() not in present
                    ]
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_fields)
