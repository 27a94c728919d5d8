"""The template registry: built-ins ship as files and are copied into the database at start;
operators add or replace templates through the admin API."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import changes
from app.db import templates as repo
from app.db.models import Template
from app.domain.errors import NotFound, ValidationFailed
from app.domain.json_values import sanitized
from app.domain.pages import after_cursor
from app.domain.read_cache import ReadCache
from app.templates import (
    TemplateDocument,
    TemplateInvalid,
    check_template,
    load_builtin,
    output_nodes,
    params_schema,
    parse_template,
    validate_name,
)


async def sync_builtins(session: AsyncSession) -> None:
    """Insert or refresh the built-in templates; one an operator replaced (builtin=False) is left
    alone, and one an operator deleted stays deleted."""
    deleted = await repo.deleted_builtins(session)
    for name, doc in load_builtin().items():
        if name in deleted:
            continue
        data = doc.to_dict()
        row = await repo.get(session, name)
        if row is None or (row.builtin and row.document != data):
            await repo.put(session, name, data, builtin=True)
            # A replica starting with newer built-ins: the others must not keep the old ones.
            await changes.announce(session)


def parse_document(data: Any) -> TemplateDocument:
    try:
        return parse_template(data)
    except TemplateInvalid as exc:
        raise ValidationFailed("The template document is not valid.", errors=exc.errors) from None


def _check_name(name: str) -> None:
    try:
        validate_name(name)
    except (ValueError, TemplateInvalid) as exc:
        raise ValidationFailed(str(exc), errors=[{"field": "name", "message": str(exc)}]) from None


def stored_document(data: dict[str, Any]) -> TemplateDocument:
    """A stored template document. One stored before bodies were checked at the edge may hold lone
    surrogates, which the model (and ComfyUI) refuse: they read as U+FFFD."""
    return TemplateDocument.model_validate(sanitized(data))


async def get_row(session: AsyncSession, name: str) -> Template:
    row = await repo.get(session, name)
    if row is None:
        raise NotFound(f"There is no template named {name!r}.")
    return row


async def find(session: AsyncSession, name: str) -> Template | None:
    return await repo.get(session, name)


async def exists(session: AsyncSession, name: str) -> bool:
    return await repo.get(session, name) is not None


async def get_document(
    session: AsyncSession, name: str, cache: ReadCache[TemplateDocument] | None = None
) -> TemplateDocument:
    """A template's document, checked; with `cache`, kept there (the submit path: see
    app/domain/read_cache.py). A cached document is shared: it is never changed (`render` copies)."""
    if cache is None:
        return stored_document((await get_row(session, name)).document)
    doc = cache.get(name)
    if doc is None:
        generation = cache.generation
        doc = stored_document((await get_row(session, name)).document)
        cache.put(name, doc, generation)
    return doc


async def all_by_name(session: AsyncSession) -> list[Template]:
    """Every template, by name (the MCP tools, the OpenAI models)."""
    return await repo.all_by_name(session)


def _capped(schema: dict[str, Any], max_string_length: int | None) -> dict[str, Any]:
    """The gateway's own bound on string params (GATEWAY_MAX_PARAM_STRING_LENGTH), shown in the schema."""
    if max_string_length is None:
        return schema
    for prop in schema.get("properties", {}).values():
        if prop.get("type") == "string" and "format" not in prop:
            prop["maxLength"] = min(prop.get("maxLength", max_string_length), max_string_length)
    return schema


def summary(
    name: str, doc: TemplateDocument, *, with_workflow: bool = False, max_string_length: int | None = None
) -> dict[str, Any]:
    view: dict[str, Any] = {
        "name": name,
        "description": doc.description,
        "params_schema": _capped(params_schema(doc), max_string_length),
        "outputs": output_nodes(doc),
    }
    if with_workflow:
        view["workflow"] = doc.workflow
    return view


async def list_page(
    session: AsyncSession, *, limit: int, cursor: str | None
) -> tuple[list[Template], str | None]:
    """Newest first, like every list of the API."""
    return await repo.page(session, limit=limit, after=after_cursor(cursor))


async def put_template(
    session: AsyncSession, name: str, data: Any, *, object_info: dict[str, Any] | None
) -> tuple[Template, bool]:
    """Register or replace; returns the row and whether it was created."""
    _check_name(name)
    doc = parse_document(data)
    try:
        check_template(doc, object_info)
    except TemplateInvalid as exc:
        raise ValidationFailed("The template does not fit its workflow.", errors=exc.errors) from None
    stored = doc.to_dict()
    # Registered again after a delete: the operator's from now on.
    await repo.unmark_builtin_deleted(session, name)
    created = await repo.put(session, name, stored, builtin=False)
    await changes.announce(session)
    return await get_row(session, name), created


async def delete_template(session: AsyncSession, name: str) -> None:
    if not await repo.delete(session, name):
        raise NotFound(f"There is no template named {name!r}.")
    if name in load_builtin():
        await repo.mark_builtin_deleted(session, name)
    await changes.announce(session)
