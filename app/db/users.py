"""Rows of `users` and `api_keys`."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import ApiKey, User
from app.db.pages import After, newest_first


async def get(session: AsyncSession, user_id: str) -> User | None:
    return await session.get(User, user_id)


async def by_ids(session: AsyncSession, user_ids: Iterable[str]) -> dict[str, User]:
    rows = await session.execute(select(User).where(User.id.in_(list(user_ids))))
    return {u.id: u for u in rows.scalars()}


async def add(session: AsyncSession, row: User | ApiKey) -> None:
    session.add(row)
    await session.flush()


async def key_and_user(session: AsyncSession, key_hash: str) -> tuple[ApiKey, User] | None:
    """The key stored under this hash, and its user."""
    row = (
        await session.execute(
            select(ApiKey, User).join(User, User.id == ApiKey.user_id).where(ApiKey.key_hash == key_hash)
        )
    ).first()
    return None if row is None else (row.ApiKey, row.User)


async def page(session: AsyncSession, *, limit: int, after: After | None) -> tuple[list[User], str | None]:
    return await newest_first(
        session, select(User), at=User.created_at, key=User.id, limit=limit, after=after
    )


async def keys_page(
    session: AsyncSession, user_id: str, *, limit: int, after: After | None
) -> tuple[list[ApiKey], str | None]:
    stmt = select(ApiKey).where(ApiKey.user_id == user_id)
    return await newest_first(session, stmt, at=ApiKey.created_at, key=ApiKey.id, limit=limit, after=after)


async def get_key(session: AsyncSession, user_id: str, key_id: str) -> ApiKey | None:
    stmt = select(ApiKey).where(ApiKey.id == key_id, ApiKey.user_id == user_id)
    return (await session.execute(stmt)).scalar_one_or_none()
