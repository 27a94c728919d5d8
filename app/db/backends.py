"""Backend rows: the pool of ComfyUI servers, shared by every replica. Callers commit."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import ACTIVE, Backend, Job
from app.db.pages import After, newest_first
from app.db.types import utcnow


async def all_backends(session: AsyncSession) -> list[Backend]:
    return list((await session.execute(select(Backend).order_by(Backend.added_at, Backend.id))).scalars())


async def get_backend(session: AsyncSession, backend_id: str) -> Backend | None:
    return await session.get(Backend, backend_id)


async def by_url(session: AsyncSession, url: str) -> Backend | None:
    return (await session.execute(select(Backend).where(Backend.url == url))).scalar_one_or_none()


async def add_backend(session: AsyncSession, url: str, *, source: str) -> Backend | None:
    """A new row, or None when the URL is registered already (also when another replica won a race)."""
    row = Backend(id=str(uuid.uuid4()), url=url, state="active", source=source)
    try:
        async with session.begin_nested():
            session.add(row)
    except IntegrityError:
        return None
    return row


async def ensure_backends(session: AsyncSession, urls: list[str], *, source: str) -> None:
    """Register the URLs not registered yet; rows that exist keep their id and state."""
    known = {b.url for b in await all_backends(session)}
    for url in urls:
        if url not in known:
            await add_backend(session, url, source=source)


async def set_state(session: AsyncSession, backend_id: str, state: str) -> Backend | None:
    await session.execute(
        update(Backend).where(Backend.id == backend_id).values(state=state, updated_at=utcnow())
    )
    return await session.get(Backend, backend_id, populate_existing=True)


async def publish_capabilities(session: AsyncSession, url: str, digest: str, body: dict[str, Any]) -> None:
    """Record what the backend can run, unless that is recorded already (one write per change)."""
    await session.execute(
        update(Backend)
        .where(Backend.url == url, Backend.capabilities_digest.is_distinct_from(digest))
        .values(capabilities=body, capabilities_digest=digest, capabilities_at=utcnow())
    )


async def capabilities_of(session: AsyncSession, urls: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Backend URL -> (digest, recorded capabilities), for those that have them."""
    rows = await session.execute(
        select(Backend.url, Backend.capabilities_digest, Backend.capabilities).where(
            Backend.url.in_(urls), Backend.capabilities_digest.is_not(None)
        )
    )
    return {url: (digest, body) for url, digest, body in rows if body is not None}


async def delete_backend(session: AsyncSession, backend_id: str) -> None:
    await session.execute(delete(Backend).where(Backend.id == backend_id))


async def jobs_on(session: AsyncSession, url: str, *, limit: int = 100) -> tuple[int, list[str]]:
    """How many unfinished jobs are handed to the backend, and the ids of the oldest of them."""
    where = (Job.backend == url, Job.status.in_(ACTIVE))
    count = (await session.execute(select(func.count()).select_from(Job).where(*where))).scalar_one()
    ids = (
        await session.execute(select(Job.id).where(*where).order_by(Job.dispatched_at, Job.id).limit(limit))
    ).scalars()
    return count, list(ids)


async def orphaned_jobs(session: AsyncSession, known_urls: list[str]) -> list[Job]:
    """Unfinished jobs handed to a backend that is not registered (any more)."""
    stmt = select(Job).where(Job.status.in_(ACTIVE), Job.backend.is_not(None))
    if known_urls:
        stmt = stmt.where(Job.backend.not_in(known_urls))
    return list((await session.execute(stmt)).scalars())


async def page(session: AsyncSession, *, limit: int, after: After | None) -> tuple[list[Backend], str | None]:
    """The pool, newest first."""
    return await newest_first(
        session, select(Backend), at=Backend.added_at, key=Backend.id, limit=limit, after=after
    )
