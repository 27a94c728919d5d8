"""GET /v1/me: who the key belongs to, its limits and its usage now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter

from app.api.deps import PrincipalDep, SecretBoxDep, SessionDep, SettingsDep
from app.api.schemas import PROBLEMS, MeOut, WebhookSecretOut
from app.domain import quotas, ratelimit, webhook_secrets
from app.domain.views import rfc3339

router = APIRouter(tags=["account"])


@router.get("/v1/me", response_model=MeOut, responses=PROBLEMS)
async def me(session: SessionDep, principal: PrincipalDep) -> dict:
    counts = await quotas.status_counts(session, principal.user_id)
    jobs_today = await quotas.created_since(
        session, principal.user_id, datetime.now(UTC) - timedelta(hours=24)
    )
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


def _secret_view(info: webhook_secrets.SecretInfo) -> dict:
    return {
        "secret": info.secret,
        "created_at": rfc3339(info.created_at),
        "previous_expires_at": rfc3339(info.previous_expires_at),
    }


@router.get("/v1/me/webhook-secret", response_model=WebhookSecretOut, responses=PROBLEMS)
async def webhook_secret(session: SessionDep, principal: PrincipalDep, box: SecretBoxDep) -> dict:
    """The secret that signs your webhooks (made on first use)."""
    return _secret_view(await webhook_secrets.current(session, box, principal.user_id))


@router.post("/v1/me/webhook-secret/rotate", response_model=WebhookSecretOut, responses=PROBLEMS)
async def rotate_webhook_secret(
    session: SessionDep, principal: PrincipalDep, box: SecretBoxDep, settings: SettingsDep
) -> dict:
    """A new secret signs from now on; the previous one keeps signing too (a second signature in
    `webhook-signature`) until `previous_expires_at` (GATEWAY_WEBHOOK_SECRET_GRACE_SECONDS)."""
    info = await webhook_secrets.rotate(
        session, box, principal.user_id, settings.webhook_secret_grace_seconds
    )
    return _secret_view(info)
