"""Reading and cancelling jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from app.api import deps
from app.api.deps import PrincipalDep, SessionDep, SignerDep, StorageDep
from app.api.pages import Cursor, Limit
from app.api.schemas import PROBLEMS, JobList, JobOut, WebhookDeliveryList
from app.domain import jobs, webhooks
from app.domain.retention import delete_job

router = APIRouter(tags=["jobs"])


@router.get("/v1/jobs", response_model=JobList, responses=PROBLEMS)
async def list_jobs(
    session: SessionDep,
    principal: PrincipalDep,
    signer: SignerDep,
    status: Annotated[
        list[str] | None, Query(description="Filter by status; repeat or comma-separate.")
    ] = None,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> dict:
    statuses = [s for value in status or () for s in value.split(",") if s] or None
    return await jobs.list_views(
        session, signer, user_id=principal.user_id, statuses=statuses, limit=limit, cursor=cursor
    )


@router.get("/v1/jobs/{job_id}", response_model=JobOut, responses=PROBLEMS)
async def get_job(job_id: str, session: SessionDep, principal: PrincipalDep, signer: SignerDep) -> dict:
    job = await jobs.get_owned(session, principal, job_id)
    return await jobs.view(session, job, signer)


@router.post("/v1/jobs/{job_id}/cancel", response_model=JobOut, responses=PROBLEMS)
async def cancel_job(
    job_id: str, request: Request, session: SessionDep, principal: PrincipalDep, signer: SignerDep
) -> dict:
    job = await jobs.cancel(session, principal, job_id, signer)
    await session.commit()
    view = await jobs.view(session, job, signer)
    # The dispatcher takes it off the backend (queue delete or targeted interrupt); subscribers
    # heard of it when the cancel committed (the event log).
    await deps.state(request).dispatcher.job_canceled(job)
    return view


@router.delete("/v1/jobs/{job_id}", status_code=204, responses=PROBLEMS)
async def delete_finished_job(
    job_id: str, session: SessionDep, principal: PrincipalDep, storage: StorageDep
) -> Response:
    """A finished job, its outputs and their files, now (owner, or an admin for any job); 409 for a
    job that is not finished."""
    prefix = await delete_job(session, principal, job_id)
    await session.commit()
    await storage.delete_prefix(prefix)
    return Response(status_code=204)


@router.get("/v1/jobs/{job_id}/webhook-deliveries", response_model=WebhookDeliveryList, responses=PROBLEMS)
async def list_webhook_deliveries(
    job_id: str,
    session: SessionDep,
    principal: PrincipalDep,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> dict:
    """The job's webhook deliveries (one per event), newest first, each with its attempts."""
    job = await jobs.get_owned(session, principal, job_id)
    return await webhooks.deliveries_view(session, job.id, limit=limit, cursor=cursor)
