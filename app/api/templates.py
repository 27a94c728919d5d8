"""Templates: anyone with a key lists and reads them; admins register, replace and delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Request, Response

from app.api import deps
from app.api.deps import AdminDep, PrincipalDep, SessionDep, SettingsDep
from app.api.input_checks import JsonObject
from app.api.pages import Cursor, Limit
from app.api.schemas import PROBLEMS, TemplateList, TemplateOut
from app.domain import templates

router = APIRouter(tags=["templates"])


@router.get("/v1/templates", response_model=TemplateList, responses=PROBLEMS)
async def list_templates(
    session: SessionDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> dict:
    rows, next_cursor = await templates.list_page(session, limit=limit, cursor=cursor)
    cap = settings.max_param_string_length
    items = [
        templates.summary(r.name, templates.stored_document(r.document), max_string_length=cap) for r in rows
    ]
    return {"items": items, "next_cursor": next_cursor}


@router.get(
    "/v1/templates/{name}", response_model=TemplateOut, response_model_exclude_none=True, responses=PROBLEMS
)
async def get_template(
    name: str, session: SessionDep, principal: PrincipalDep, settings: SettingsDep
) -> dict:
    doc = await templates.get_document(session, name)
    return templates.summary(
        name, doc, with_workflow=principal.is_admin, max_string_length=settings.max_param_string_length
    )


@router.put(
    "/v1/templates/{name}",
    response_model=TemplateOut,
    response_model_exclude_none=True,
    responses={
        **PROBLEMS,
        201: {"model": TemplateOut, "description": "Registered (a new name); 200 when it replaced one."},
    },
)
async def put_template(
    name: str,
    request: Request,
    response: Response,
    session: SessionDep,
    admin: AdminDep,
    settings: SettingsDep,
    document: Annotated[JsonObject, Body(description="A template document.")],
) -> dict:
    # With a backend's node definitions at hand, binds are checked against the real node inputs.
    object_info = deps.state(request).dispatcher.object_info()
    row, created = await templates.put_template(session, name, document, object_info=object_info)
    view = templates.summary(
        row.name,
        templates.stored_document(row.document),
        with_workflow=True,
        max_string_length=settings.max_param_string_length,
    )
    await session.commit()
    deps.state(request).forget_cached()  # after the commit: see app/domain/read_cache.py
    response.status_code = 201 if created else 200
    return view


@router.delete("/v1/templates/{name}", status_code=204, responses=PROBLEMS)
async def delete_template(name: str, request: Request, session: SessionDep, admin: AdminDep) -> Response:
    await templates.delete_template(session, name)
    await session.commit()
    deps.state(request).forget_cached()  # after the commit: see app/domain/read_cache.py
    return Response(status_code=204)
