"""Rows of `uploads`: the files users sent, for their jobs' inputs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Upload


async def totals(session: AsyncSession, user_id: str) -> tuple[int, int]:
    """The user's stored uploads: how many, and how many bytes."""
    stmt = select(func.count(), func.coalesce(func.sum(Upload.size), 0)).where(Upload.user_id == user_id)
    count, size = (await session.execute(stmt)).one()
    return int(count), int(size)


async def get_owned(session: AsyncSession, user_id: str, upload_id: str) -> Upload | None:
    stmt = select(Upload).where(Upload.id == upload_id, Upload.user_id == user_id)
    return (await session.execute(stmt)).scalar_one_or_none()


def add(session: AsyncSession, upload: Upload) -> None:
    """Added to the transaction; the caller commits (or flushes to use its id)."""
    session.add(upload)


async def delete_row(session: AsyncSession, upload: Upload) -> None:
    await session.delete(upload)


async def created_before(session: AsyncSession, cutoff: datetime, limit: int) -> list[tuple[str, str]]:
    """(id, storage key) of up to `limit` uploads created before `cutoff`."""
    stmt = select(Upload.id, Upload.storage_key).where(Upload.created_at < cutoff).limit(limit)
    return [(row.id, row.storage_key) for row in (await session.execute(stmt)).all()]


async def delete_ids(session: AsyncSession, ids: Sequence[str]) -> None:
    await session.execute(delete(Upload).where(Upload.id.in_(list(ids))))
