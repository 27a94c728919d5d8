"""Reading and cancelling jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.api.deps import PrincipalDep, SessionDep, SignerDep
from app.api.schemas import PROBLEMS, JobList, JobOut
from app.domain import jobs

router = APIRouter(tags=["jobs"])


@router.get("/v1/jobs", response_model=JobList, responses=PROBLEMS)
async def list_jobs(
    session: SessionDep,
    principal: PrincipalDep,
    signer: SignerDep,
    status: Annotated[list[str] | None, Query(description="Filter by status; repeat or comma-separate.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
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
    await request.app.state.on_job_canceled(job.id)
    return view
