"""Idempotency keys of POST /v1/generate: one row per (user, key), taken by inserting it."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import IdempotencyKey
from app.db.types import utcnow


async def prune(session: AsyncSession, before: datetime) -> None:
    """Forget keys older than `before` (the index on created_at keeps this cheap)."""
    await session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < before))


async def take(session: AsyncSession, user_id: str, key: str, request_hash: str) -> IdempotencyKey | None:
    """Insert and commit the key's row; None if the user already has a row with that key.
    Its own transaction: the unique (user_id, key) decides between concurrent requests."""
    row = IdempotencyKey(
        id=str(uuid.uuid4()), user_id=user_id, key=key, request_hash=request_hash, created_at=utcnow()
    )
    session.add(row)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        return None
    return row


async def get(session: AsyncSession, user_id: str, key: str) -> IdempotencyKey | None:
    stmt = select(IdempotencyKey).where(IdempotencyKey.user_id == user_id, IdempotencyKey.key == key)
    return (await session.execute(stmt.execution_options(populate_existing=True))).scalar_one_or_none()


async def take_over(session: AsyncSession, row_id: str, request_hash: str, *, stale_before: datetime) -> bool:
    """Take a key whose request never finished (its process died): only one request can."""
    result = await session.execute(
        update(IdempotencyKey)
        .where(
            IdempotencyKey.id == row_id,
            IdempotencyKey.job_id.is_(None),
            IdempotencyKey.created_at < stale_before,
        )
        .values(request_hash=request_hash, created_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]  # an UPDATE's CursorResult


async def attach(session: AsyncSession, row_id: str, job_id: str) -> None:
    await session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.id == row_id)
        .values(job_id=job_id)
        .execution_options(synchronize_session=False)
    )


async def release(session: AsyncSession, row_id: str) -> None:
    """The request failed without making a job: the key may be used again."""
    await session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.id == row_id, IdempotencyKey.job_id.is_(None))
    )
