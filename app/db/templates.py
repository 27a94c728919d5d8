"""Rows of `templates`, and the markers (in `gateway_state`) of built-ins an operator deleted."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import GatewayState, Template
from app.db.pages import After, newest_first
from app.db.types import utcnow

#: A built-in an operator deleted is marked in gateway_state, so the next start does not bring it back.
_DELETED = "deleted_builtin_template:"


async def get(session: AsyncSession, name: str) -> Template | None:
    return await session.get(Template, name)


async def all_by_name(session: AsyncSession) -> list[Template]:
    return list((await session.execute(select(Template).order_by(Template.name))).scalars().all())


async def page(
    session: AsyncSession, *, limit: int, after: After | None
) -> tuple[list[Template], str | None]:
    return await newest_first(
        session, select(Template), at=Template.created_at, key=Template.name, limit=limit, after=after
    )


async def put(session: AsyncSession, name: str, document: dict[str, Any], *, builtin: bool) -> bool:
    """Insert or replace; whether the row was created."""
    row = await session.get(Template, name)
    if row is None:
        session.add(Template(name=name, document=document, builtin=builtin))
    else:
        row.document = document
        row.builtin = builtin
    await session.flush()
    return row is None


async def delete(session: AsyncSession, name: str) -> bool:
    """Whether there was such a template."""
    row = await session.get(Template, name)
    if row is None:
        return False
    await session.delete(row)
    await session.flush()
    return True


async def deleted_builtins(session: AsyncSession) -> set[str]:
    rows = await session.execute(select(GatewayState.key).where(GatewayState.key.startswith(_DELETED)))
    return {key[len(_DELETED) :] for key in rows.scalars()}


async def mark_builtin_deleted(session: AsyncSession, name: str) -> None:
    if await session.get(GatewayState, _DELETED + name) is None:
        session.add(GatewayState(key=_DELETED + name, value=utcnow().isoformat()))
        await session.flush()


async def unmark_builtin_deleted(session: AsyncSession, name: str) -> None:
    marker = await session.get(GatewayState, _DELETED + name)
    if marker is not None:
        await session.delete(marker)
