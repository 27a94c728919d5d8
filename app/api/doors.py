"""Template jobs submitted through the gateway's other front doors (the OpenAI images API, the MCP
server), and waiting for them.

The rules are POST /v1/generate's (app/api/generate.py): the request's rate token, the job quotas
and the rows in one transaction (the token's row lock serializes a user's concurrent submits, so
no quota is overshot), the dispatcher woken after the commit, and the wait listening on the event
bus, subscribed before the commit. What the contract adds there (webhooks, idempotency keys,
`Prefer`) is not part of these doors.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.api import deps
from app.api.deps import charge, charge_refused
from app.db.models import Job, Output, Upload
from app.domain import jobs
from app.domain.errors import DomainError, LimitExceeded
from app.domain.events.bus import JobEvent, Subscription
from app.domain.users import Principal
from app.domain.waiting import until_ended


async def submit(
    request: Request,
    session: AsyncSession,
    principal: Principal,
    template: str,
    params_list: list[dict[str, Any]],
    *,
    metadata: dict[str, Any],
    new_uploads: list[Upload],
) -> tuple[list[Job], list[Subscription]]:
    """One job per item of `params_list`, all or none, and a bus subscription to each (the caller
    unsubscribes). `new_uploads` are added with the jobs; their files are the caller's to delete
    if this raises."""
    state = deps.state(request)
    try:
        built = [
            await jobs.build(
                session,
                principal,
                jobs.GenerateInput(
                    template=template, workflow=None, params=dict(params), priority=0, metadata=metadata
                ),
                state.settings,
                object_info=state.dispatcher.object_info(),
                storage=state.storage,
                new_uploads=new_uploads,
                fetch_url=state.fetch_url,
                documents=state.templates,
            )
            for params in params_list
        ]
    except DomainError:
        await charge_refused(request, session, principal)
        raise
    try:
        await charge(request, session, principal)
        for job in built:
            await jobs.enqueue(session, principal, job)
        session.add_all(new_uploads)
    except LimitExceeded:
        # All or none: a quota reached at the second of n jobs leaves no first one behind.
        await charge_refused(request, session, principal)
        raise
    # Subscribed before the commit: a job that ends at once still wakes its waiter.
    subs = [state.bus.subscribe_job(job.id) for job in built]
    try:
        await session.commit()
    except BaseException:
        for sub in subs:
            state.bus.unsubscribe(sub)
        raise
    new_uploads.clear()
    state.dispatcher.job_submitted(principal.user_id)
    for job in built:
        state.metrics.jobs_submitted.labels(job.template or "(workflow)", principal.user_id).inc()
    return built, subs


async def wait_all(subs: list[Subscription], seconds: float) -> bool:
    """True once every job ended, False when `seconds` passed first (the caller reads the rows)."""
    deadline = time.monotonic() + seconds
    for sub in subs:
        if not await until_ended(sub, max(0.0, deadline - time.monotonic())):
            return False
    return True


async def follow(sub: Subscription, seconds: float) -> AsyncIterator[JobEvent]:
    """A job's live events until its final status or until `seconds` passed (then it just ends;
    the caller reads the row). A subscriber that fell behind ends at once too: the row decides."""
    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or sub.overflowed:
            return
        try:
            async with asyncio.timeout(remaining):
                event = await sub.queue.get()
        except TimeoutError:
            return
        if event is None:
            continue
        yield event
        if event.terminal:
            return


async def ended_jobs(
    session: AsyncSession, principal: Principal, job_ids: list[str]
) -> tuple[list[Job], dict[str, list[Output]]]:
    """The jobs as they are now (read again), and their outputs."""
    found = [await jobs.get_owned(session, principal, job_id, fresh=True) for job_id in job_ids]
    return found, await jobs.outputs_for(session, job_ids)


async def read_output(request: Request, output: Output) -> bytes:
    chunks = [chunk async for chunk in deps.state(request).storage.read_stream(output.storage_key)]
    return b"".join(chunks)


async def output_b64(request: Request, output: Output) -> str:
    return base64.b64encode(await read_output(request, output)).decode("ascii")


def absolute_url(request: Request, path: str) -> str:
    """A signed output path as a URL the client can fetch: clients of these doors (chat front ends,
    agents) take image URLs as they are, without a base."""
    return str(request.base_url).rstrip("/") + path
