"""GET /v1/me: who the key belongs to, its limits and its usage now."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import func, select

from app.api.deps import PrincipalDep, SessionDep
from app.api.schemas import PROBLEMS, MeOut
from app.db.models import Job

router = APIRouter(tags=["account"])


@router.get("/v1/me", response_model=MeOut, responses=PROBLEMS)
async def me(session: SessionDep, principal: PrincipalDep) -> dict:
    rows = await session.execute(
        select(Job.status, func.count())
        .where(Job.user_id == principal.user_id, Job.status.in_(("queued", "running")))
        .group_by(Job.status)
    )
    counts = {status: count for status, count in rows.all()}
    return {
        "id": principal.user_id,
        "name": principal.name,
        "is_admin": principal.is_admin,
        "limits": principal.limits,
        "usage": {"queued": counts.get("queued", 0), "running": counts.get("running", 0)},
    }
