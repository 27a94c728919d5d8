"""The backend pool as admins manage it: add, drain, resume, remove, and the view of each.

The rows are the pool; each replica's dispatcher follows the table (see app/dispatch/dispatcher.py,
sync_backends). What only a dispatcher knows (health, load, capabilities) comes in as `live`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import backends as repo
from app.db import leases
from app.db.models import Backend
from app.domain.errors import Conflict, NotFound, ValidationFailed
from app.domain.pages import after_cursor
from app.domain.views import rfc3339

log = logging.getLogger("app.backends")

# How many in-flight job ids a view lists (the count is always exact).
MAX_LISTED_JOBS = 100


def normalize_url(value: str) -> str:
    """An http(s) base URL of a ComfyUI server, without a trailing slash; else ValidationFailed."""

    def bad(message: str) -> ValidationFailed:
        return ValidationFailed(f"url: {message}.", errors=[{"field": "url", "message": message}])

    value = value.strip()
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError when it is not a number in range
    except ValueError as exc:
        raise bad(f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise bad("must start with http:// or https://")
    if not parts.hostname:
        raise bad("has no host")
    if parts.username is not None or parts.password is not None:
        raise bad("must not carry credentials")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise bad("must be a base URL, without a query or fragment")
    if any(c.isspace() for c in value):
        raise bad("must not contain spaces")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host if port is None else f"{host}:{port}"
    return f"{parts.scheme}://{netloc}{parts.path}".rstrip("/")


async def register_configured_backends(session: AsyncSession, urls: list[str], *, prune: bool) -> None:
    """GATEWAY_COMFYUI_URLS joins the pool at start (a URL that is there already keeps its row).

    With `prune`, a backend that came from the setting and is no longer in it leaves the pool,
    but never with jobs on it: while it holds some it is drained instead, and it goes at a later
    start (or by DELETE) once empty. Backends added by admins stay whatever the setting says.
    """
    configured = [u.rstrip("/") for u in urls]
    await repo.ensure_backends(session, configured, source="env")
    if not prune:
        return
    for row in await repo.all_backends(session):
        if row.source != "env" or row.url in configured:
            continue
        count, _ = await repo.jobs_on(session, row.url, limit=0)
        if count:
            log.warning(
                "%s is no longer configured but holds %d job(s): drained until they finish", row.url, count
            )
            await repo.set_state(session, row.id, "draining")
        else:
            log.info("%s is no longer configured: removed from the pool", row.url)
            await repo.delete_backend(session, row.id)


async def pool_urls(sessionmaker: async_sessionmaker[AsyncSession], configured: list[str]) -> list[str]:
    """Every backend's URL now: the configured ones and the pool's rows (admins add some at run time)."""
    async with sessionmaker() as session:
        rows = await repo.all_backends(session)
    return list(dict.fromkeys([*configured, *(row.url for row in rows)]))


async def list_backends(
    session: AsyncSession, *, limit: int, cursor: str | None
) -> tuple[list[Backend], str | None]:
    """A page of the pool, newest first."""
    return await repo.page(session, limit=limit, after=after_cursor(cursor))


async def get_backend(session: AsyncSession, backend_id: str) -> Backend:
    row = await repo.get_backend(session, backend_id)
    if row is None:
        raise NotFound(f"There is no backend {backend_id!r}.")
    return row


async def add_backend(session: AsyncSession, url: str) -> Backend:
    normalized = normalize_url(url)
    row = await repo.add_backend(session, normalized, source="admin")
    if row is None:
        existing = await repo.by_url(session, normalized)
        raise Conflict(f"{normalized} is registered already.", backend_id=existing.id if existing else None)
    return row


async def set_draining(session: AsyncSession, backend_id: str, draining: bool) -> Backend:
    await get_backend(session, backend_id)
    row = await repo.set_state(session, backend_id, "draining" if draining else "active")
    assert row is not None
    return row


async def remove_backend(session: AsyncSession, backend_id: str) -> Backend:
    """Only a drained backend that holds no job is removed, so no job is ever left behind."""
    row = await get_backend(session, backend_id)
    if row.state != "draining":
        raise Conflict(
            f"Drain {row.url} first (POST /v1/admin/backends/{row.id}/drain), then remove it once its jobs finished."
        )
    count, _ = await repo.jobs_on(session, row.url, limit=0)
    if count:
        raise Conflict(
            f"{row.url} still holds {count} unfinished job(s); remove it once they finished.",
            jobs_in_flight=count,
        )
    await repo.delete_backend(session, backend_id)
    return row


async def backend_view(session: AsyncSession, row: Backend, live: Mapping[str, Any] | None) -> dict[str, Any]:
    """The admin view: the row, its jobs (from the database, so every replica's count), and what
    this process's dispatcher knows of it (on an API-only replica, what its last probe found; None
    before the first poll or probe)."""
    count, ids = await repo.jobs_on(session, row.url, limit=MAX_LISTED_JOBS)
    on_pg = session.bind is not None and session.bind.dialect.name == "postgresql"
    lease = await leases.lease_of(session, row.url) if on_pg else None
    live = live or {}
    health = live.get("health") or {
        # Another replica follows it: its health as that owner last reported it.
        "status": ("up" if lease.healthy else "down") if lease is not None and lease.live else "unknown",
        "since": None,
        "last_error": None,
        "connected": False,
    }
    return {
        "id": row.id,
        "url": row.url,
        "state": row.state,
        "source": row.source,
        "added_at": rfc3339(row.added_at),
        "health": health,
        "load": {
            "in_flight": count,
            "backend_queue": live.get("backend_queue"),
        },
        "jobs": {"count": count, "ids": ids},
        "capabilities": live.get("capabilities"),
        "lease": None
        if lease is None
        else {
            "owner": lease.owner if lease.live else None,
            "owner_name": lease.owner_name if lease.live else None,
            "generation": lease.generation,
            "acquired_at": rfc3339(lease.acquired_at) if lease.live else None,
            "heartbeat_at": rfc3339(lease.heartbeat_at) if lease.live else None,
            "expires_at": rfc3339(lease.expires_at) if lease.live else None,
        },
    }
