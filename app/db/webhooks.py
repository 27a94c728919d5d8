"""Webhook rows: the outbox written at a job's transitions, the sender's leases and attempts, and
users' signing secrets (kept encrypted; this module never sees them in clear).

Callers commit, except where a function says otherwise.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Job, WebhookAttempt, WebhookDelivery, WebhookSecret
from app.db.pages import After, newest_first
from app.db.types import utcnow

# The event a transition into each status announces.
EVENT_OF_STATUS = {
    "running": "job.running",
    "succeeded": "job.succeeded",
    "failed": "job.failed",
    "canceled": "job.canceled",
}
EVENTS = tuple(EVENT_OF_STATUS.values())
DEFAULT_EVENTS = ("job.succeeded", "job.failed", "job.canceled")
# The key in a session's `info` of a callable that wakes the local sender (set by the app).
WAKE_KEY = "webhooks_wake"


async def on_transition(session: AsyncSession, job: Job) -> None:
    """Called with the row a status transition returned, in that transition's transaction: the
    delivery exists if and only if the transition committed. At most one per (job, event)."""
    if not job.webhook_url or job.status not in EVENT_OF_STATUS:
        return
    wanted = job.webhook_events or DEFAULT_EVENTS
    events = [EVENT_OF_STATUS[job.status]]
    if job.status in ("succeeded", "failed") and job.started_at is not None:
        # A job can end before the gateway saw it start (a short or cached prompt goes from queued
        # to succeeded): it did run, so job.running is announced too, unless it already was.
        events.insert(0, "job.running")
    events = [e for e in events if e in wanted]
    if not events:
        return
    now = utcnow()
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    for event in events:
        values = {
            "id": "msg_" + uuid.uuid4().hex,
            "job_id": job.id,
            "user_id": job.user_id,
            "event": event,
            "url": job.webhook_url,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        }
        await session.execute(dialect.insert(WebhookDelivery).values(**values).on_conflict_do_nothing())
    # Wake this process's sender once the row is committed (it polls too, for other replicas' rows).
    wake = session.info.get(WAKE_KEY)
    if wake is not None:
        sa_event.listen(session.sync_session, "after_commit", lambda _: wake(), once=True)


def _due(now: datetime) -> Any:
    return and_(
        WebhookDelivery.status == "pending",
        WebhookDelivery.next_attempt_at <= now,
        or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now),
    )


async def claim_due(
    session: AsyncSession,
    *,
    owner: str,
    lease_seconds: float,
    limit: int,
    skip_ids: Sequence[str] = (),
    skip_users: Sequence[str] = (),
) -> list[WebhookDelivery]:
    """Lease up to `limit` due deliveries to `owner`, committed. Each lease is a conditional UPDATE, so
    two senders (replicas) never hold the same delivery; an expired lease (a sender that died) is
    taken over. `skip_ids` (what the caller is sending already) and `skip_users` (users at their
    share of the caller's slots) are left for later."""
    now = utcnow()
    stmt = select(WebhookDelivery.id).where(_due(now))
    if skip_ids:
        stmt = stmt.where(WebhookDelivery.id.not_in(list(skip_ids)))
    if skip_users:
        stmt = stmt.where(WebhookDelivery.user_id.not_in(list(skip_users)))
    stmt = stmt.order_by(WebhookDelivery.next_attempt_at).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        # Replicas scanning at once skip each other's candidates instead of racing for them.
        stmt = stmt.with_for_update(skip_locked=True)
    ids = list((await session.execute(stmt)).scalars())
    claimed: list[WebhookDelivery] = []
    if ids:
        # Conditional per row: a row another sender leased since the SELECT is not taken.
        claimed = list(
            (
                await session.execute(
                    update(WebhookDelivery)
                    .where(WebhookDelivery.id.in_(ids), _due(now))
                    .values(
                        lease_owner=owner, lease_until=now + timedelta(seconds=lease_seconds), updated_at=now
                    )
                    .returning(WebhookDelivery)
                    .execution_options(synchronize_session=False, populate_existing=True)
                )
            ).scalars()
        )
    await session.commit()
    return claimed


async def record_attempt(
    session: AsyncSession,
    delivery: WebhookDelivery,
    *,
    owner: str,
    attempted_at: datetime,
    duration_ms: float,
    status_code: int | None,
    error: str | None,
    succeeded: bool,
    next_attempt_at: datetime | None,
) -> WebhookDelivery | None:
    """Record one attempt and move the delivery on: succeeded, failed for good (`next_attempt_at`
    None), or due again. Only while `owner` holds the lease; None if it lost it."""
    final = "succeeded" if succeeded else ("failed" if next_attempt_at is None else "pending")
    row = (
        (
            await session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery.id, WebhookDelivery.lease_owner == owner)
                .values(
                    status=final,
                    attempts=WebhookDelivery.attempts + 1,
                    next_attempt_at=next_attempt_at,
                    lease_owner=None,
                    lease_until=None,
                    last_error=None if succeeded else (error or f"HTTP {status_code}")[:500],
                    updated_at=utcnow(),
                )
                .returning(WebhookDelivery)
                .execution_options(synchronize_session=False, populate_existing=True)
            )
        )
        .scalars()
        .first()
    )
    if row is None:
        return None
    session.add(
        WebhookAttempt(
            delivery_id=delivery.id,
            attempted_at=attempted_at,
            duration_ms=duration_ms,
            status_code=status_code,
            error=error[:500] if error else None,
            succeeded=succeeded,
        )
    )
    return row


async def release(session: AsyncSession, owner: str, ids: Sequence[str] | None = None) -> None:
    """Give back the leases `owner` holds (all, or those of `ids`): those deliveries are due again at once."""
    stmt = update(WebhookDelivery).where(
        WebhookDelivery.lease_owner == owner, WebhookDelivery.status == "pending"
    )
    if ids is not None:
        stmt = stmt.where(WebhookDelivery.id.in_(ids))
    await session.execute(
        stmt.values(lease_owner=None, lease_until=None).execution_options(synchronize_session=False)
    )


async def attempts_of(session: AsyncSession, delivery_ids: Sequence[str]) -> dict[str, list[WebhookAttempt]]:
    result: dict[str, list[WebhookAttempt]] = {i: [] for i in delivery_ids}
    if delivery_ids:
        rows = await session.execute(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(delivery_ids))
            .order_by(WebhookAttempt.id)
        )
        for attempt in rows.scalars():
            result[attempt.delivery_id].append(attempt)
    return result


async def redeliver(session: AsyncSession, delivery_id: str) -> WebhookDelivery | None:
    """Due now again, with a fresh round of attempts (what was attempted stays recorded)."""
    now = utcnow()
    return (
        (
            await session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id)
                .values(
                    status="pending",
                    attempts=0,
                    next_attempt_at=now,
                    lease_owner=None,
                    lease_until=None,
                    updated_at=now,
                )
                .returning(WebhookDelivery)
                .execution_options(synchronize_session=False, populate_existing=True)
            )
        )
        .scalars()
        .first()
    )


# ---- secrets ---------------------------------------------------------------------------------


async def secrets_of(session: AsyncSession, user_id: str) -> list[WebhookSecret]:
    """The user's secrets that still sign, newest first."""
    now = utcnow()
    stmt = (
        select(WebhookSecret)
        .where(
            WebhookSecret.user_id == user_id,
            or_(WebhookSecret.expires_at.is_(None), WebhookSecret.expires_at > now),
        )
        .order_by(WebhookSecret.generation.desc())
    )
    return list((await session.execute(stmt)).scalars())


async def latest_generation(session: AsyncSession, user_id: str) -> WebhookSecret | None:
    stmt = (
        select(WebhookSecret)
        .where(WebhookSecret.user_id == user_id)
        .order_by(WebhookSecret.generation.desc())
        .limit(1)
    )
    return (await session.execute(stmt)).scalars().first()


async def add_secret(
    session: AsyncSession, user_id: str, generation: int, ciphertext: str, *, retire_before: datetime | None
) -> WebhookSecret:
    """Add generation `generation`; the ones before it that still sign stop at `retire_before` (they
    keep signing until then). The caller commits; two adding the same generation collide on the
    primary key (IntegrityError): one wins."""
    if retire_before is not None:
        await session.execute(
            update(WebhookSecret)
            .where(
                WebhookSecret.user_id == user_id,
                WebhookSecret.generation < generation,
                or_(WebhookSecret.expires_at.is_(None), WebhookSecret.expires_at > retire_before),
            )
            .values(expires_at=retire_before)
        )
    secret = WebhookSecret(user_id=user_id, generation=generation, ciphertext=ciphertext, created_at=utcnow())
    session.add(secret)
    await session.flush()
    return secret


async def deliveries_page(
    session: AsyncSession, job_id: str, *, limit: int, after: After | None
) -> tuple[list[WebhookDelivery], str | None]:
    """A job's deliveries, newest first."""
    stmt = select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
    return await newest_first(
        session, stmt, at=WebhookDelivery.created_at, key=WebhookDelivery.id, limit=limit, after=after
    )
