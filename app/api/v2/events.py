"""GET /api/v2/jobs/{id}/events: the job's live events in v2 frames.

`status` first (`{status, queue_position}`), then `progress`, `preview` (base64) and `output`
frames, and the terminal `status` last, after every output. Built on the same follower as the /v1
stream (app/domain/events/live.py). No `id:` lines: the v2 stream carries no cursor (the SDK re-reads the
job instead of resuming)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sse_starlette import EventSourceResponse, ServerSentEvent

from app.api import deps
from app.api.deps import BusDep, PrincipalDep, SessionDep, SettingsDep, SignerDep
from app.api.v2 import views
from app.config import Settings
from app.domain import jobs
from app.domain.errors import Unauthorized
from app.domain.events.live import JobFollower
from app.domain.users import authenticate
from app.domain.v2_errors import V2Error
from app.storage.signing import UrlSigner

router = APIRouter(prefix="/api/v2", tags=["v2"])

# comfy-sdk drops a stream that stays silent for 45 s: keep-alives come well before that.
MAX_PING_SECONDS = 20.0


def _frame(event: str, data: dict[str, Any]) -> bytes:
    return ServerSentEvent(data=json.dumps(data, separators=(",", ":")), event=event).encode()


@router.get("/jobs/{job_id}/events", response_class=EventSourceResponse)
async def job_events(
    job_id: str,
    request: Request,
    session: SessionDep,
    principal: PrincipalDep,
    signer: SignerDep,
    settings: SettingsDep,
    bus: BusDep,
) -> EventSourceResponse:
    job = await jobs.find_with_workflow(session, principal.user_id, job_id)
    if job is None:
        raise V2Error(404, "not_found", f"There is no job {job_id!r}.")
    workflow = job.workflow or {}
    follower = await JobFollower.open(
        session, bus, deps.state(request).event_log, signer, principal, job_id, after=None, previews=True
    )
    await session.close()
    base = views.base_url(request, settings)
    key = request.headers.get("authorization", "").partition(" ")[2].strip()
    stream = _stream(
        follower, deps.state(request).sessionmaker, settings, signer, key, job_id, base, workflow
    )

    ping = min(settings.sse_ping_seconds, MAX_PING_SECONDS)
    return EventSourceResponse(stream, ping=ping, headers={"X-Accel-Buffering": "no"})


async def _stream(
    follower: JobFollower,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    signer: UrlSigner,
    key: str,
    job_id: str,
    base: str,
    workflow: dict[str, Any],
) -> AsyncIterator[bytes]:
    """The job's events as v2 SSE frames, while the caller's key stays good."""

    async def still_allowed() -> bool:
        async with sessionmaker() as s:
            try:
                await authenticate(s, key, settings)
            except Unauthorized:
                return False
        return True

    sent: set[str] = set()
    # Node starts are sent live, logged progress after its commit: never show a count going back.
    nodes_done = 0
    async for ev in follower.events(
        sessionmaker, still_allowed=still_allowed, check_every=settings.live_auth_check_seconds
    ):
        data = ev.data
        if ev.event == "status":
            status = views.status_of(data["status"], data.get("outputs_expired_at") is not None)
            if data["status"] in jobs.TERMINAL:
                # Outputs before the end, also for a job that had ended before the stream began.
                for out in data.get("outputs") or ():
                    if (frame := _output_frame(out, sent, job_id, base, signer)) is not None:
                        yield frame
            yield _frame("status", {"status": status, "queue_position": data.get("queue_position")})
        elif ev.event == "progress":
            progress = views.progress_view(data, workflow, "running")
            if progress is not None and progress["nodes_done"] >= nodes_done:
                nodes_done = progress["nodes_done"]
                yield _frame("progress", progress)
        elif ev.event == "output":
            if (frame := _output_frame(data, sent, job_id, base, signer)) is not None:
                yield frame
        elif ev.event == "preview":
            yield _preview_frame(data)


def _output_frame(
    data: dict[str, Any], sent: set[str], job_id: str, base: str, signer: UrlSigner
) -> bytes | None:
    """An output's frame, once per output (`sent` holds the ids already sent)."""
    if data.get("id") in sent:
        return None
    sent.add(data["id"])
    return _frame("output", views.output_view({**data, "job_id": job_id}, base, signer))


def _preview_frame(data: dict[str, Any]) -> bytes:
    return _frame(
        "preview",
        {
            "node_id": data.get("node") or "",
            "content_type": data["content_type"],
            "data_base64": data["image"],
        },
    )
