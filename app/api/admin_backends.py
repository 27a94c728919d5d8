"""Admin routes for the backend pool: list, add, drain, resume, remove. A non-admin key gets 403.

Ids are opaque UUIDs (see BackendOut.id). Removing takes two steps so that no job is ever left
behind: drain the backend (no new jobs), wait until it holds none (`jobs.count` is 0), then
DELETE it; a DELETE before that answers 409 and changes nothing.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from app.api import deps
from app.api.deps import AdminDep, SessionDep
from app.api.pages import Cursor, Limit
from app.api.schemas import PROBLEMS, BackendCreate, BackendList, BackendOut
from app.db.models import Backend
from app.domain import backend_registry

router = APIRouter(prefix="/v1/admin/backends", tags=["admin"])

BackendId = Annotated[str, Path(max_length=36, description="The backend's opaque id (`id` in the list).")]


async def _view(request: Request, session: AsyncSession, row: Backend) -> dict:
    # A replica that does not dispatch asks the backends itself (at most once per health period).
    await deps.state(request).dispatcher.probe_health()
    live = deps.state(request).dispatcher.backend_live(row.url)
    return await backend_registry.backend_view(session, row, live)


def _changed(request: Request, url: str, *, draining: bool | None = None) -> None:
    # This replica applies it now; the others on their next poll of the table.
    deps.state(request).dispatcher.backends_changed(url, draining=draining)


@router.get("", response_model=BackendList, responses=PROBLEMS)
async def list_backends(
    request: Request,
    session: SessionDep,
    admin: AdminDep,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> dict:
    """The pool, newest first, with each backend's health, load and capabilities."""
    rows, next_cursor = await backend_registry.list_backends(session, limit=limit, cursor=cursor)
    return {"items": [await _view(request, session, row) for row in rows], "next_cursor": next_cursor}


@router.post("", status_code=201, response_model=BackendOut, responses=PROBLEMS)
async def add_backend(request: Request, body: BackendCreate, session: SessionDep, admin: AdminDep) -> dict:
    """Register a ComfyUI server; the dispatcher starts following it at once (409 if its URL is registered)."""
    row = await backend_registry.add_backend(session, body.url)
    await session.commit()
    _changed(request, row.url)
    return await _view(request, session, row)


@router.get("/{backend_id}", response_model=BackendOut, responses=PROBLEMS)
async def get_backend(request: Request, backend_id: BackendId, session: SessionDep, admin: AdminDep) -> dict:
    return await _view(request, session, await backend_registry.get_backend(session, backend_id))


@router.post("/{backend_id}/drain", response_model=BackendOut, responses=PROBLEMS)
async def drain_backend(
    request: Request, backend_id: BackendId, session: SessionDep, admin: AdminDep
) -> dict:
    """No new jobs go to it; the jobs it holds finish there."""
    return await _set_draining(request, session, backend_id, True)


@router.post("/{backend_id}/resume", response_model=BackendOut, responses=PROBLEMS)
async def resume_backend(
    request: Request, backend_id: BackendId, session: SessionDep, admin: AdminDep
) -> dict:
    """Undo a drain: it gets new jobs again."""
    return await _set_draining(request, session, backend_id, False)


async def _set_draining(request: Request, session: AsyncSession, backend_id: str, draining: bool) -> dict:
    row = await backend_registry.set_draining(session, backend_id, draining)
    await session.commit()
    _changed(request, row.url, draining=draining)
    return await _view(request, session, row)


@router.delete("/{backend_id}", status_code=204, responses=PROBLEMS)
async def remove_backend(
    request: Request, backend_id: BackendId, session: SessionDep, admin: AdminDep
) -> Response:
    """Forget a drained backend that holds no job (409 otherwise). Every replica stops following it."""
    row = await backend_registry.remove_backend(session, backend_id)
    await session.commit()
    _changed(request, row.url)
    return Response(status_code=204)
