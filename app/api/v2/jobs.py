"""Comfy API v2 jobs: submit (201), read, list, cancel, workflow. Same rows as /v1 jobs."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from pydantic import ConfigDict
from sqlalchemy.ext.asyncio import AsyncSession

from app.api import deps
from app.api.deps import (
    PrincipalDep,
    SessionDep,
    SettingsDep,
    SignerDep,
    UncountedPrincipalDep,
    charge,
    charge_refused,
)
from app.api.input_checks import RequestModel
from app.api.v2 import views
from app.config import Settings
from app.db.models import Job
from app.domain import idempotency, jobs, v2_jobs
from app.domain.errors import Conflict, DomainError, LimitExceeded, ValidationFailed
from app.domain.users import Principal
from app.domain.v2_errors import V2Error
from app.storage.signing import UrlSigner

router = APIRouter(prefix="/api/v2", tags=["v2"])

_FILTER = re.compile(r"^metadata\[(.+)\]$")


class SubmitRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")

    workflow: Any
    # Partner-node credentials (`api_key_comfy_org`): no backend of this gateway uses them, and
    # they are never stored.
    extra_data: dict[str, Any] | None = None
    metadata: Any = None


async def _view(
    request: Request,
    session: AsyncSession,
    job: Job,
    signer: UrlSigner,
    settings: Settings,
    *,
    new: bool = False,
) -> dict:
    # Progress counts the graph's nodes.
    await jobs.load_workflow(session, job)
    outputs = [] if new else (await jobs.outputs_for(session, [job.id]))[job.id]
    return views.job_view(
        job,
        outputs,
        base=views.base_url(request, settings),
        signer=signer,
        settings=settings,
        queue_position=await jobs.queue_position(session, job),
    )


async def _owned(session: AsyncSession, principal: Principal, job_id: str, *, fresh: bool = False) -> Job:
    job = await jobs.find_with_workflow(session, principal.user_id, job_id, fresh=fresh)
    if job is None:
        raise V2Error(404, "not_found", f"There is no job {job_id!r}.")
    return job


@router.post("/jobs", status_code=201)
async def submit(
    body: SubmitRequest,
    request: Request,
    session: SessionDep,
    principal: UncountedPrincipalDep,
    settings: SettingsDep,
    signer: SignerDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> dict:
    try:
        if idempotency_key is not None:
            idempotency.check_key(idempotency_key)
            await v2_jobs.check_key_unused(session, principal.user_id, idempotency_key)
        metadata = v2_jobs.check_metadata(body.metadata)
        job = await v2_jobs.build(
            session,
            principal,
            body.workflow,
            metadata,
            settings,
            deps.state(request).dispatcher.object_info(),
        )
    except v2_jobs.KeyReused:
        await charge_refused(request, session, principal)
        raise _reused() from None
    except DomainError:
        await charge_refused(request, session, principal)
        raise
    # One transaction: the token, the quotas, the row, the key (see POST /v1/generate for why).
    try:
        await charge(request, session, principal)
        await jobs.enqueue(session, principal, job)
        if idempotency_key is not None:
            await v2_jobs.take_key(session, principal.user_id, idempotency_key, job.id)
        await session.commit()
    except LimitExceeded:
        await session.commit()  # the token stays spent; no job
        raise
    except v2_jobs.KeyReused:
        # The same key, in a request that got there first.
        await session.rollback()
        raise _reused() from None
    deps.state(request).dispatcher.job_submitted(principal.user_id)
    deps.state(request).metrics.jobs_submitted.labels("(workflow)", principal.user_id).inc()
    return await _view(request, session, job, signer, settings, new=True)


def _reused() -> V2Error:
    return V2Error(
        422,
        "idempotency_key_reuse",
        "This Idempotency-Key was already used for a job; keys are single-use (look the job up instead).",
        field="Idempotency-Key",
    )


@router.get("/jobs")
async def list_jobs(
    request: Request,
    session: SessionDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> dict:
    """The caller's jobs (from either API), newest first; `metadata[k]=v` keeps the jobs labelled so."""
    filters: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if (m := _FILTER.match(name)) is not None:
            filters[m.group(1)] = value
        elif name not in ("limit", "cursor"):
            raise V2Error(422, "invalid_request", f"Unknown query parameter {name[:80]!r}.", field=name[:80])
    if len(filters) > v2_jobs.MAX_METADATA_PAIRS:
        raise V2Error(
            422,
            "invalid_metadata_filter",
            f"At most {v2_jobs.MAX_METADATA_PAIRS} metadata filters are accepted.",
            field="metadata",
        )
    for key in filters:
        if not v2_jobs.KEY_RE.match(key):
            raise V2Error(
                422,
                "invalid_metadata_filter",
                f"No label can have the key {key[:80]!r}.",
                field=f"metadata[{key[:80]}]",
            )
    # The graph counts the nodes of each job's progress.
    try:
        rows, next_cursor = await jobs.labeled_page(
            session, principal.user_id, filters, limit=limit, cursor=cursor
        )
    except ValidationFailed:
        raise V2Error(422, "invalid_cursor", "The cursor is not one this API sent.", field="cursor") from None
    return {"jobs": [views.summary_view(j) for j in rows], "next_cursor": next_cursor}


@router.get("/jobs/{job_id}")
async def get_job(
    job_id: str,
    request: Request,
    session: SessionDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    signer: SignerDep,
) -> dict:
    return await _view(request, session, await _owned(session, principal, job_id), signer, settings)


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(
    job_id: str,
    request: Request,
    session: SessionDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    signer: SignerDep,
) -> dict:
    """Idempotent: a job that already ended is answered as it is (200), unchanged."""
    job = await _owned(session, principal, job_id)
    if job.status in jobs.TERMINAL:
        return await _view(request, session, job, signer, settings)
    try:
        job = await jobs.cancel(session, principal, job_id, signer)
    except Conflict:
        # It ended meanwhile.
        await session.rollback()
        return await _view(
            request, session, await _owned(session, principal, job_id, fresh=True), signer, settings
        )
    await session.commit()
    view = await _view(request, session, job, signer, settings)
    await deps.state(request).dispatcher.job_canceled(job)
    return view


@router.get("/jobs/{job_id}/workflow")
async def get_workflow(job_id: str, session: SessionDep, principal: PrincipalDep) -> dict:
    """The executed API-format graph (a template job's rendered one)."""
    job = await _owned(session, principal, job_id)
    return {"workflow": job.workflow, "format": "api"}
