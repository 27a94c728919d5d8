"""POST /v1/generate: validate, render, store one job row, answer 202. Nothing is sent to ComfyUI here."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.api.deps import PrincipalDep, SessionDep, SettingsDep, SignerDep
from app.api.schemas import PROBLEMS, GenerateRequest, JobOut
from app.domain import jobs
from app.domain.errors import ValidationFailed

router = APIRouter(tags=["jobs"])


@router.post("/v1/generate", status_code=202, response_model=JobOut, responses=PROBLEMS)
async def generate(
    body: GenerateRequest,
    request: Request,
    response: Response,
    session: SessionDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    signer: SignerDep,
) -> dict:
    if body.webhook is not None:
        # Accepting a webhook we would not deliver would be worse than refusing it.
        raise ValidationFailed(
            "Webhooks are not supported by this gateway version yet.",
            errors=[{"field": "webhook", "message": "not supported yet"}],
        )
    job = await jobs.submit(
        session,
        principal,
        jobs.GenerateInput(
            template=body.template,
            workflow=body.workflow,
            params=body.params,
            priority=body.priority,
            metadata=body.metadata,
        ),
        settings,
    )
    # Commit before reading anything back: on SQLite a write transaction holds the database's
    # only write lock, and reads done inside it would make the dispatcher wait for that lock.
    await session.commit()
    # After the commit, never before: the dispatcher must find the row when it wakes.
    request.app.state.dispatcher_wake()
    view = await jobs.view(session, job, signer, new=True)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return view
