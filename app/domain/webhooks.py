"""Webhook rules for the API: accepting a job's webhook, listing its deliveries, redelivering."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import webhooks as repo
from app.db.models import WebhookAttempt, WebhookDelivery
from app.db.webhooks import DEFAULT_EVENTS, EVENTS
from app.domain.errors import NotFound, ValidationFailed
from app.domain.pages import after_cursor
from app.domain.views import rfc3339
from app.net.ssrf import OutboundGuard, UnsafeUrl

__all__ = ["DEFAULT_EVENTS", "EVENTS", "accept", "deliveries_view", "redeliver"]


async def accept(guard: OutboundGuard, url: str, events: Sequence[str] | None) -> tuple[str, list[str]]:
    """Check a job's webhook when it is submitted: the URL's form, any literal address, and that it
    is no backend's (it is checked again, resolved, at every attempt), and the events. Returns the
    URL and events to store."""
    try:
        checked = await guard.accept(url)
        try:
            # What the sender's HTTP client would refuse (control characters ...) is refused now.
            httpx.URL(checked)
        except httpx.InvalidURL as exc:
            raise UnsafeUrl(f"the URL is malformed ({exc})") from None
    except UnsafeUrl as exc:
        raise ValidationFailed(
            f"The webhook URL may not be used: {exc.reason}.",
            errors=[{"field": "webhook.url", "message": exc.reason}],
        ) from None
    chosen = list(dict.fromkeys(events)) if events is not None else list(DEFAULT_EVENTS)
    unknown = [e for e in chosen if e not in EVENTS]
    if unknown or not chosen:
        raise ValidationFailed(
            "webhook.events must list at least one of " + ", ".join(EVENTS) + ".",
            errors=[
                {"field": "webhook.events", "message": f"unknown events {unknown}" if unknown else "empty"}
            ],
        )
    return checked, chosen


def _attempt_view(attempt: WebhookAttempt) -> dict[str, Any]:
    return {
        "attempted_at": rfc3339(attempt.attempted_at),
        "status_code": attempt.status_code,
        "error": attempt.error,
        "duration_ms": round(attempt.duration_ms, 1),
        "succeeded": attempt.succeeded,
    }


def delivery_view(delivery: WebhookDelivery, attempts: list[WebhookAttempt]) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "job_id": delivery.job_id,
        "event": delivery.event,
        "url": delivery.url,
        "status": delivery.status,
        "next_attempt_at": rfc3339(delivery.next_attempt_at) if delivery.status == "pending" else None,
        "last_error": delivery.last_error,
        "created_at": rfc3339(delivery.created_at),
        "attempts": [_attempt_view(a) for a in attempts],
    }


async def deliveries_view(
    session: AsyncSession, job_id: str, *, limit: int = 20, cursor: str | None = None
) -> dict[str, Any]:
    """A page of a job's deliveries, newest first, each with its attempts. The caller checked ownership."""
    deliveries, next_cursor = await repo.deliveries_page(
        session, job_id, limit=limit, after=after_cursor(cursor)
    )
    attempts = await repo.attempts_of(session, [d.id for d in deliveries])
    return {"items": [delivery_view(d, attempts[d.id]) for d in deliveries], "next_cursor": next_cursor}


async def redeliver(session: AsyncSession, delivery_id: str) -> dict[str, Any]:
    """Admins: send a delivery again now, with a fresh round of attempts. Commits."""
    row = await repo.redeliver(session, delivery_id)
    if row is None:
        raise NotFound(f"There is no webhook delivery {delivery_id!r}.")
    await session.commit()
    return delivery_view(row, (await repo.attempts_of(session, [row.id]))[row.id])
