"""POST /v1/generate: validate, render, store one job row, answer 202. Nothing is sent to ComfyUI here.

`Idempotency-Key` (app/domain/idempotency.py) makes retries safe; `Prefer: wait=N`
(app/domain/waiting.py) holds the answer until the job ends, up to N seconds.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from app.api import deps
from app.api.deps import BearerDep, caller, charge
from app.api.schemas import PROBLEMS, GenerateRequest, JobOut
from app.config import Settings
from app.db.models import Job, Upload
from app.domain import idempotency, jobs, webhooks
from app.domain.errors import DomainError, LimitExceeded
from app.domain.events.bus import EventBus
from app.domain.users import Principal
from app.domain.waiting import parse_prefer_wait, until_ended
from app.net.ssrf import OutboundGuard
from app.storage.base import Storage
from app.storage.signing import UrlSigner

router = APIRouter(tags=["jobs"])


@router.post(
    "/v1/generate",
    status_code=202,
    response_model=JobOut,
    responses={
        **PROBLEMS,
        202: {
            "model": JobOut,
            "description": "The job, queued.",
            "headers": {
                "Location": {
                    "description": "`/v1/jobs/{id}`: where the job is.",
                    "schema": {"type": "string"},
                }
            },
        },
        200: {
            "model": JobOut,
            "description": "The job ended within `Prefer: wait=N` (header `Preference-Applied`), or an "
            "`Idempotency-Key` replay (header `Idempotent-Replayed: true`): the job as it is.",
        },
    },
)
async def generate(
    body: GenerateRequest,
    request: Request,
    response: Response,
    credentials: BearerDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            description="Retry-safe submits: the same key and body within 24 h answer the same job (200)."
        ),
    ] = None,
    prefer: Annotated[
        str | None, Header(description="`wait=N` (N <= 60): answer when the job ends, or after N s.")
    ] = None,
) -> dict:
    # Uploads made from image params given as data: URIs or URLs: stored with the job, or their
    # files deleted if no job comes of the request.
    new_uploads: list[Upload] = []
    # The gateway's services straight from its state, and the request's session and caller made
    # here, not as dependencies: each dependency costs FastAPI's resolution on every submit (a
    # session's is a generator in an exit stack). The caller's rate is charged by `_generate`.
    state = deps.state(request)
    storage = state.storage
    try:
        async with state.sessionmaker() as session:
            principal = await caller(request, session, credentials)
            return await _generate(
                body,
                request,
                response,
                session,
                principal,
                state.settings,
                state.signer,
                state.bus,
                storage,
                state.outbound_guard,
                new_uploads,
                idempotency_key,
                prefer,
            )
    except BaseException:
        # Emptied once the job and its uploads are committed.
        for upload in new_uploads:
            await storage.delete(upload.storage_key)
        raise


async def _generate(
    body: GenerateRequest,
    request: Request,
    response: Response,
    session: AsyncSession,
    principal: Principal,
    settings: Settings,
    signer: UrlSigner,
    bus: EventBus,
    storage: Storage,
    guard: OutboundGuard,
    new_uploads: list[Upload],
    idempotency_key: str | None,
    prefer: str | None,
) -> dict:
    """Claim the key and build the job; store it in one short transaction; answer (or wait, then answer)."""
    claim = idempotency.Claim()
    try:
        wait = parse_prefer_wait(prefer, settings.max_wait_seconds)
        if idempotency_key is not None:
            claim = await _claim_key(session, principal, settings, body, idempotency_key)
        if claim.replay_job_id is not None:
            await charge(request, session, principal)
            await session.commit()
            response.headers["Idempotent-Replayed"] = "true"
            return await _answer(
                request, response, session, signer, principal, claim.replay_job_id, wait, replay=True
            )
        job = await _build_job(body, request, session, principal, settings, storage, guard, new_uploads)
    except DomainError:
        # A refused request counts against the rate too (or is answered 429 if over it); its key is free again.
        await session.rollback()
        await idempotency.release(session, claim)
        await charge(request, session, principal)
        await session.commit()
        raise
    await _add_job(request, session, principal, job, new_uploads, claim)
    return await _commit_and_answer(
        request, response, session, principal, signer, bus, job, new_uploads, wait
    )


async def _claim_key(
    session: AsyncSession, principal: Principal, settings: Settings, body: GenerateRequest, key: str
) -> idempotency.Claim:
    idempotency.check_key(key)
    return await idempotency.claim(
        session,
        principal.user_id,
        key,
        idempotency.request_hash(body.model_dump(mode="json")),
        settings,
    )


async def _build_job(
    body: GenerateRequest,
    request: Request,
    session: AsyncSession,
    principal: Principal,
    settings: Settings,
    storage: Storage,
    guard: OutboundGuard,
    new_uploads: list[Upload],
) -> Job:
    """The request checked and rendered into a job row (not yet added to the session)."""
    webhook = None
    if body.webhook is not None:
        webhook = await webhooks.accept(guard, body.webhook.url, body.webhook.events)
    state = deps.state(request)
    return await jobs.build(
        session,
        principal,
        jobs.GenerateInput(
            template=body.template,
            workflow=body.workflow,
            params=body.params,
            priority=body.priority,
            metadata=body.metadata,
            timeout_seconds=body.timeout_seconds,
            webhook=webhook,
        ),
        settings,
        # A backend's node definitions, when one is connected, tell which inputs name server files.
        object_info=state.dispatcher.object_info(),
        storage=storage,
        new_uploads=new_uploads,
        fetch_url=state.fetch_url,
        documents=state.templates,
    )


async def _add_job(
    request: Request,
    session: AsyncSession,
    principal: Principal,
    job: Job,
    new_uploads: list[Upload],
    claim: idempotency.Claim,
) -> None:
    """Spend the request's token, check the quotas and add the job, its uploads and its key (not committed)."""
    # One short transaction from here: the request's token, the quotas, the row. The token's UPDATE
    # locks the user's bucket row until the commit, so a user's concurrent submits (on any
    # replica) count and insert one after the other and never overshoot a quota.
    try:
        await charge(request, session, principal)
        await jobs.enqueue(session, principal, job)
        session.add_all(new_uploads)
        await idempotency.attach(session, claim, job.id)
    except LimitExceeded:
        await idempotency.release(session, claim)
        await session.commit()  # the token stays spent; no job; the key is free again
        raise


async def _commit_and_answer(
    request: Request,
    response: Response,
    session: AsyncSession,
    principal: Principal,
    signer: UrlSigner,
    bus: EventBus,
    job: Job,
    new_uploads: list[Upload],
    wait: int | None,
) -> dict:
    """Commit the job, wake the dispatcher, and answer 202 at once or when the job ends within `wait`."""
    # Subscribed before the commit: a job that ends at once still wakes its waiter.
    sub = bus.subscribe_job(job.id, statuses_only=True) if wait else None
    try:
        # The answer (its queue position) is read in the job's own transaction: read after the
        # commit, it took the connection a second time, which on PostgreSQL is a BEGIN and a
        # ROLLBACK more and, under a burst, a second wait in the pool's queue. (On SQLite the read
        # runs on the loop's thread in microseconds, so the write lock is held no longer for it.)
        answer = await jobs.view(session, job, signer, new=True) if sub is None else {}
        await session.commit()
        new_uploads.clear()
        # After the commit, never before: the dispatcher must find the row when it wakes.
        state = deps.state(request)
        state.dispatcher.job_submitted(principal.user_id)
        state.metrics.jobs_submitted.labels(job.template or "(workflow)", principal.user_id).inc()
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        if sub is None:
            return answer
        await session.close()  # no connection is held while waiting
        await until_ended(sub, wait or 0)
    finally:
        if sub is not None:
            bus.unsubscribe(sub)
    return await _answer(request, response, session, signer, principal, job.id, 0, replay=False, waited=wait)


async def _answer(
    request: Request,
    response: Response,
    session: AsyncSession,
    signer: UrlSigner,
    principal: Principal,
    job_id: str,
    wait: int | None,
    *,
    replay: bool,
    waited: int | None = None,
) -> dict:
    """The job as it is now: 200 if it ended (or is a replay), else 202. A replay with `Prefer: wait`
    waits for the original job too."""
    bus = deps.state(request).bus
    if wait:
        sub = bus.subscribe_job(job_id, statuses_only=True)
        try:
            job = await jobs.get_owned(session, principal, job_id, fresh=True)
            if job.status not in jobs.TERMINAL:
                await session.close()
                await until_ended(sub, wait)
        finally:
            bus.unsubscribe(sub)
        waited = wait
    job = await jobs.get_owned(session, principal, job_id, fresh=True)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if job.status in jobs.TERMINAL and waited:
        response.headers["Preference-Applied"] = f"wait={waited}"
    if replay or (job.status in jobs.TERMINAL and waited):
        response.status_code = 200
    return await jobs.view(session, job, signer)
