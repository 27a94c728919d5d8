"""Rows of `v2_idempotency_keys`: an /api/v2 submit's Idempotency-Key, single-use per user."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import V2IdempotencyKey


class KeyTaken(Exception):
    """A request that got there first holds the key."""


async def used(session: AsyncSession, user_id: str, key: str) -> bool:
    return await session.get(V2IdempotencyKey, (user_id, key)) is not None


async def take(session: AsyncSession, user_id: str, key: str, job_id: str) -> None:
    """Write the key for the job, in the submit's transaction; KeyTaken when another request's
    transaction wrote it first (the caller rolls back)."""
    session.add(V2IdempotencyKey(user_id=user_id, key=key, job_id=job_id))
    try:
        await session.flush()
    except IntegrityError:
        raise KeyTaken from None
