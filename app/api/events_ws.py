"""GET /v1/ws: the live events of all of the caller's jobs, over one WebSocket.

Frames are JSON text: `{"event", "job_id", "id", "data"}`, the same events as the SSE route
(`status`, `progress`, `output`, and `preview` when asked for with `?previews=true`), with the
same per-job ids. The key comes as `?api_key=`, as `Authorization: Bearer`, or, to keep it out of
URLs and logs, as the first frame: `{"api_key": "..."}` or the key alone. The first frame the
server sends is `{"event": "subscribed", ...}`:
from then on every event of the caller's jobs is sent. A bad key gets an `error` frame (a
problem object) and the socket is closed with 1008 (policy violation); the key is checked again
every `GATEWAY_LIVE_AUTH_CHECK_SECONDS`, so a revoked key or a disabled user stops receiving.
A client too slow to keep up gets a `lagged` frame (events were dropped: re-read its jobs).
An admin may ask for every user's jobs with `?all=true` (operators' dashboards, the console's
queue); anyone else asking so gets a 403 `error` frame and close 1008.
A user over GATEWAY_MAX_LIVE_STREAMS_PER_USER open connections (with its SSE streams) gets an
`error` frame (a 429 problem) and close 1013 (try again later).
"""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from app.api import deps
from app.domain.errors import DomainError, Forbidden, LimitExceeded, Unauthorized
from app.domain.events.bus import Subscription
from app.domain.events.live import frame
from app.domain.users import Principal, authenticate
from app.domain.views import v2_only

router = APIRouter(tags=["events"])

POLICY_VIOLATION = 1008
#: Over the cap of live connections: a temporary condition, unlike a bad key.
TRY_AGAIN_LATER = 1013
#: How long a client that sends its key as the first frame has to do so.
FIRST_FRAME_SECONDS = 10.0


async def _authenticate(websocket: WebSocket, key: str | None) -> Principal:
    # A JSON first frame can carry a lone surrogate (`\ud800`), which no key holds and which
    # cannot be hashed: it is a wrong key, not a server error.
    if key is not None and not _encodable(key):
        raise Unauthorized("The API key is not valid.")
    state = deps.state(websocket)
    async with state.sessionmaker() as session:
        return await authenticate(session, key, state.settings)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def _refuse(websocket: WebSocket, error: DomainError, *, code: int = POLICY_VIOLATION) -> None:
    if websocket.application_state == WebSocketState.CONNECTED:
        try:
            await websocket.send_text(
                json.dumps({"event": "error", "job_id": None, "id": None, "data": error.problem()})
            )
            await websocket.close(code=code, reason=error.title)
        except (WebSocketDisconnect, RuntimeError):
            pass


async def _first_frame_key(websocket: WebSocket) -> str | None:
    """The key from the first frame: `{"api_key": "..."}`, or the key alone as the frame's text."""
    try:
        raw = await asyncio.wait_for(websocket.receive_text(), FIRST_FRAME_SECONDS)
    except (TimeoutError, KeyError, WebSocketDisconnect, RuntimeError):
        return None
    try:
        message = json.loads(raw)
    except ValueError:
        return raw.strip() or None
    key = message.get("api_key") if isinstance(message, dict) else message
    return key if isinstance(key, str) else None


def _header_key(websocket: WebSocket) -> str | None:
    """A client that can set headers (not a browser) may send `Authorization: Bearer <key>`."""
    scheme, _, key = websocket.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return key.strip() or None


@router.websocket("/v1/ws")
async def live_events(
    websocket: WebSocket,
    api_key: str | None = None,
    previews: bool = False,
    all: bool = False,  # noqa: A002 - the query name
) -> None:
    await websocket.accept()
    key = api_key if api_key is not None else _header_key(websocket)
    if key is None:
        key = await _first_frame_key(websocket)
    try:
        principal = await _authenticate(websocket, key)
    except Unauthorized as exc:
        await _refuse(websocket, exc)
        return
    if all and not principal.is_admin:
        await _refuse(websocket, Forbidden("Only admins may follow every user's jobs (all=true)."))
        return
    state = deps.state(websocket)
    try:
        slot = state.live_slots.take(principal)
    except LimitExceeded as exc:
        await _refuse(websocket, exc, code=TRY_AGAIN_LATER)
        return
    try:
        await _follow(websocket, principal, key, previews, everyone=all)
    finally:
        state.live_slots.give_back(slot)


async def _follow(
    websocket: WebSocket, principal: Principal, key: str | None, previews: bool, *, everyone: bool
) -> None:
    """Stream the events until the client goes or its key stops being good for them."""
    state = deps.state(websocket)
    bus = state.bus
    sub = (
        bus.subscribe_all(previews=previews)
        if everyone
        else bus.subscribe_user(principal.user_id, previews=previews)
    )
    tasks = [
        asyncio.create_task(c)
        for c in (
            _send_events(websocket, sub, principal.user_id),
            _read_until_closed(websocket),
            _keep_checking_key(websocket, key, everyone, state.settings.live_auth_check_seconds),
        )
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        checker = tasks[2]
        if checker in done and not checker.cancelled() and checker.exception() is None:
            refusal = checker.result()
            if refusal is not None:
                await _refuse(websocket, refusal)
    finally:
        bus.unsubscribe(sub)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _send_events(websocket: WebSocket, sub: Subscription, user_id: str) -> None:
    await websocket.send_text(
        json.dumps({"event": "subscribed", "job_id": None, "id": None, "data": {"user_id": user_id}})
    )
    last: dict[str, int] = {}
    # A `lagged` frame not yet followed by any other: a second one would tell the client nothing new.
    told = False
    while True:
        event = await sub.queue.get()
        if sub.overflowed:
            sub.overflowed = False
            if not told:
                told = True
                await websocket.send_text(
                    json.dumps({"event": "lagged", "job_id": None, "id": None, "data": {}})
                )
        if event is None or v2_only(event.event, event.data):
            continue
        if event.id is not None:
            # The same event can reach us twice (this replica's commit and a relay); send it once.
            if event.id <= last.get(event.job_id, 0):
                continue
            last[event.job_id] = event.id
            if event.terminal:
                last.pop(event.job_id, None)
        await websocket.send_text(json.dumps(frame(event), separators=(",", ":")))
        told = False


async def _read_until_closed(websocket: WebSocket) -> None:
    # Nothing is expected from the client; reading notices when it goes.
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return


async def _keep_checking_key(
    websocket: WebSocket, key: str | None, everyone: bool, every: float
) -> DomainError:
    """Check the key again every `every` seconds; returns the refusal once it is no longer good."""
    while True:
        await asyncio.sleep(every)
        try:
            again = await _authenticate(websocket, key)
        except Unauthorized as exc:
            return exc
        if everyone and not again.is_admin:
            return Forbidden("Your admin rights were taken away: all=true is for admins.")
