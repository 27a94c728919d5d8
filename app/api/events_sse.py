"""GET /v1/jobs/{id}/events: Server-Sent Events for one job.

The stream starts with the job as it is now (with `Last-Event-ID`: without an id, then what the
client missed), follows its changes, and ends after the terminal status. Every event but `preview`
has an `id:`, the event's id in the job's event log (app/domain/events/live.py has the ordering rules).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from app.api import deps
from app.api.deps import AdminDep, BusDep, PrincipalDep, SessionDep, SettingsDep, SignerDep
from app.api.schemas import PROBLEMS
from app.config import Settings
from app.domain.errors import Unauthorized, ValidationFailed
from app.domain.events.bus import EventBus, JobEvent
from app.domain.events.live import JobFollower
from app.domain.users import Principal, authenticate
from app.domain.views import v1_progress, v2_only
from app.storage.signing import UrlSigner

router = APIRouter(tags=["events"])


def _sse(event: JobEvent) -> bytes:
    # One event goes to every subscriber of its job: encoded once, by the first.
    if event.encoded is None:
        data = v1_progress(event.data) if event.event == "progress" else event.data
        event.encoded = ServerSentEvent(
            data=json.dumps(data, separators=(",", ":")),
            event=event.event,
            id=None if event.id is None else str(event.id),
        ).encode()
    return event.encoded


def parse_event_id(value: str | None) -> int | None:
    if value is None or value.strip() == "":
        return None
    value = value.strip()
    if not value.isdigit() or len(value) > 18:
        raise ValidationFailed(
            "Last-Event-ID must be an event id this stream sent (a non-negative integer).",
            errors=[{"field": "Last-Event-ID", "message": "not an event id"}],
        )
    return int(value)


class _SlotResponse(EventSourceResponse):
    """Gives the caller's live slot (app/api/live_slots.py) back when the stream ends, however it
    ends: also when the client left before the first event and the generator never ran."""

    def __init__(self, *args: Any, release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


@router.get(
    "/v1/jobs/{job_id}/events",
    responses={**PROBLEMS, 200: {"content": {"text/event-stream": {}}}},
    response_class=EventSourceResponse,
    description=(
        "Server-Sent Events: `status` (the job), `progress`, `output`, and a final `status`, then the stream ends. "
        "Every event has an `id`; reconnect with `Last-Event-ID` to get the job as it is now (a `status` "
        "without an id), then, in order, what was missed. "
        "`?previews=true` adds `preview` events (base64 images, no id, never stored). "
        "A user holds at most GATEWAY_MAX_LIVE_STREAMS_PER_USER live connections (these streams and /v1/ws "
        "sockets); one more is a 429."
    ),
)
async def job_events(
    job_id: str,
    request: Request,
    session: SessionDep,
    principal: PrincipalDep,
    signer: SignerDep,
    settings: SettingsDep,
    bus: BusDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    previews: Annotated[bool, Query(description="also send live preview images")] = False,
) -> EventSourceResponse:
    return await _stream(
        request, session, principal, signer, settings, bus, job_id, last_event_id, previews, any_user=False
    )


@router.get(
    "/v1/admin/jobs/{job_id}/events",
    responses={**PROBLEMS, 200: {"content": {"text/event-stream": {}}}},
    response_class=EventSourceResponse,
    tags=["admin"],
    summary="Any user's job events (admins)",
    description="The owner's `GET /v1/jobs/{id}/events`, for any user's job: the same stream, ids and resume.",
)
async def any_job_events(
    job_id: str,
    request: Request,
    session: SessionDep,
    admin: AdminDep,
    signer: SignerDep,
    settings: SettingsDep,
    bus: BusDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    previews: Annotated[bool, Query(description="also send live preview images")] = False,
) -> EventSourceResponse:
    return await _stream(
        request, session, admin, signer, settings, bus, job_id, last_event_id, previews, any_user=True
    )


async def _stream(
    request: Request,
    session: AsyncSession,
    principal: Principal,
    signer: UrlSigner,
    settings: Settings,
    bus: EventBus,
    job_id: str,
    last_event_id: str | None,
    previews: bool,
    *,
    any_user: bool,
) -> EventSourceResponse:
    after = parse_event_id(last_event_id)
    slots = deps.state(request).live_slots
    slot = slots.take(principal)
    try:
        follower = await JobFollower.open(
            session,
            bus,
            deps.state(request).event_log,
            signer,
            principal,
            job_id,
            after=after,
            previews=previews,
            any_user=any_user,
        )
    except BaseException:
        slots.give_back(slot)
        raise
    # The request's session is not used by the stream: it would hold a connection for hours.
    await session.close()
    sessionmaker = deps.state(request).sessionmaker

    key = request.headers.get("authorization", "").partition(" ")[2].strip()

    async def still_allowed() -> bool:
        async with sessionmaker() as s:
            try:
                again = await authenticate(s, key, settings)
            except Unauthorized:
                return False
        # An admin's stream of another user's job ends when the admin rights do.
        return again.is_admin or not any_user

    async def stream() -> AsyncIterator[bytes]:
        async for event in follower.events(
            sessionmaker, still_allowed=still_allowed, check_every=settings.live_auth_check_seconds
        ):
            if not v2_only(event.event, event.data):
                yield _sse(event)

    return _SlotResponse(
        stream(),
        ping=settings.sse_ping_seconds,
        headers={"X-Accel-Buffering": "no"},
        release=lambda: slots.give_back(slot),
    )
