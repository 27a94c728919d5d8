"""GET /v1/me: who the key belongs to, its limits and its usage now."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter

from app.api.deps import PrincipalDep, SessionDep
from app.api.schemas import PROBLEMS, MeOut
from app.db import usage
from app.db.types import utcnow
from app.domain import ratelimit

router = APIRouter(tags=["account"])


@router.get("/v1/me", response_model=MeOut, responses=PROBLEMS)
async def me(session: SessionDep, principal: PrincipalDep) -> dict:
    counts = await usage.status_counts(session, principal.user_id)
    jobs_today = await usage.created_since(session, principal.user_id, utcnow() - timedelta(hours=24))
    remaining = (
        None
        if principal.unlimited
        else await ratelimit.level(session, principal.user_id, int(principal.limits["rate_per_minute"]))
    )
    return {
        "id": principal.user_id,
        "name": principal.name,
        "is_admin": principal.is_admin,
        "limits": principal.limits,
        "usage": {**counts, "jobs_today": jobs_today, "rate_remaining": remaining},
    }
