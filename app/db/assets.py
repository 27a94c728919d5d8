"""Rows of `assets` (/api/v2's uploads); outputs of a user's jobs are assets too."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Asset, Job, Output


async def by_hash(session: AsyncSession, user_id: str, digest: str) -> Asset | None:
    stmt = select(Asset).where(Asset.user_id == user_id, Asset.hash == digest)
    return (await session.execute(stmt)).scalar_one_or_none()


async def get_owned(session: AsyncSession, user_id: str, asset_id: str) -> Asset | None:
    stmt = select(Asset).where(Asset.id == asset_id, Asset.user_id == user_id)
    return (await session.execute(stmt)).scalar_one_or_none()


async def owned_output(session: AsyncSession, user_id: str, output_id: str) -> Output | None:
    """An output of one of the user's jobs."""
    stmt = (
        select(Output)
        .join(Job, Job.id == Output.job_id)
        .where(Output.id == output_id, Job.user_id == user_id)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def by_file_path(session: AsyncSession, user_id: str, file_path: str) -> Asset | None:
    """The user's newest asset of that name."""
    stmt = (
        select(Asset)
        .where(Asset.user_id == user_id, Asset.file_path == file_path)
        .order_by(Asset.created_at.desc(), Asset.id)
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


def add(session: AsyncSession, asset: Asset) -> None:
    """Added to the transaction (the caller commits, and handles a concurrent same-hash insert)."""
    session.add(asset)


async def get(session: AsyncSession, asset_id: str) -> Asset | None:
    return await session.get(Asset, asset_id)


async def get_output(session: AsyncSession, output_id: str) -> Output | None:
    return await session.get(Output, output_id)


async def delete(session: AsyncSession, item: Asset | Output) -> None:
    await session.delete(item)
