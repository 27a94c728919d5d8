"""GET /v1/jobs/{id}/events: Server-Sent Events for one job.

The stream starts with the job as it is now, then follows its changes, and ends after the
terminal status. It subscribes before reading the row, so no change can fall in between.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse

from app.api.deps import BusDep, PrincipalDep, SessionDep, SettingsDep, SignerDep
from app.api.schemas import PROBLEMS
from app.db.jobs import TERMINAL
from app.domain import jobs

router = APIRouter(tags=["events"])


def _sse(event: str, data: dict) -> dict:
    return {"event": event, "data": json.dumps(data, separators=(",", ":"))}


@router.get(
    "/v1/jobs/{job_id}/events",
    responses={**PROBLEMS, 200: {"content": {"text/event-stream": {}}}},
    response_class=EventSourceResponse,
)
async def job_events(
    job_id: str,
    request: Request,
    session: SessionDep,
    principal: PrincipalDep,
    signer: SignerDep,
    settings: SettingsDep,
    bus: BusDep,
) -> EventSourceResponse:
    job = await jobs.get_owned(session, principal, job_id)
    sub = bus.subscribe_job(job.id)
    try:
        first = await jobs.view(session, job, signer)
    except BaseException:
        bus.unsubscribe(sub)
        raise
    # The request's session is not used by the stream: it would hold a connection for hours.
    await session.close()
    sessionmaker = request.app.state.sessionmaker

    async def stream() -> AsyncIterator[dict]:
        try:
            yield _sse("status", first)
            if first["status"] in TERMINAL:
                return
            while True:
                event = await sub.queue.get()
                if sub.overflowed:
                    # The subscriber fell behind and events were dropped: resend the truth.
                    sub.overflowed = False
                    async with sessionmaker() as s:
                        current = await jobs.view(s, await jobs.get_owned(s, principal, job_id), signer)
                    yield _sse("status", current)
                    if current["status"] in TERMINAL:
                        return
                    continue
                yield _sse(event.event, event.data)
                if event.terminal:
                    return
        finally:
            bus.unsubscribe(sub)

    return EventSourceResponse(stream(), ping=int(settings.sse_ping_seconds), headers={"X-Accel-Buffering": "no"})
