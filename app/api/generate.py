"""POST /v1/generate: validate, render, store one job row, answer 202. Nothing is sent to ComfyUI here."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.api.deps import GuardDep, SessionDep, SettingsDep, SignerDep, StorageDep, UncountedPrincipalDep, charge
from app.api.schemas import PROBLEMS, GenerateRequest, JobOut
from app.db.models import Upload
from app.domain import jobs, webhooks
from app.domain.errors import DomainError, LimitExceeded

router = APIRouter(tags=["jobs"])


@router.post("/v1/generate", status_code=202, response_model=JobOut, responses=PROBLEMS)
async def generate(
    body: GenerateRequest,
    request: Request,
    response: Response,
    session: SessionDep,
    principal: UncountedPrincipalDep,
    settings: SettingsDep,
    signer: SignerDep,
    storage: StorageDep,
    guard: GuardDep,
) -> dict:
    # Uploads made from image params given as data: URIs or URLs: stored with the job, or their
    # files deleted if no job comes of the request.
    new_uploads: list[Upload] = []
    try:
        return await _generate(body, request, response, session, principal, settings, signer, storage, guard, new_uploads)
    except BaseException:
        # Emptied once the job and its uploads are committed.
        for upload in new_uploads:
            await storage.delete(upload.storage_key)
        raise


async def _generate(body, request, response, session, principal, settings, signer, storage, guard, new_uploads) -> dict:  # noqa: ANN001
    try:
        webhook = None
        if body.webhook is not None:
            webhook = webhooks.accept(guard, body.webhook.url, body.webhook.events)
        job = await jobs.build(
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
            object_info=request.app.state.object_info(),
            storage=storage,
            new_uploads=new_uploads,
            fetch_url=getattr(request.app.state, "fetch_url", None),
        )
    except DomainError:
        # A refused request counts against the rate too (or is answered 429 if over it).
        await charge(request, session, principal)
        await session.commit()
        raise
    # One short transaction from here: the request's token, the quotas, the row. The token's UPDATE
    # locks the user's bucket row until the commit, so a user's concurrent submits (on any
    # replica) count and insert one after the other and never overshoot a quota.
    await charge(request, session, principal)
    try:
        await jobs.enqueue(session, principal, job)
        session.add_all(new_uploads)
    except LimitExceeded:
        await session.commit()  # the token stays spent; no job
        raise
    # Commit before reading anything back: on SQLite a write transaction holds the database's
    # only write lock, and reads done inside it would make the dispatcher wait for that lock.
    await session.commit()
    new_uploads.clear()
    # After the commit, never before: the dispatcher must find the row when it wakes.
    request.app.state.on_job_submitted(principal.user_id)
    view = await jobs.view(session, job, signer, new=True)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return view
