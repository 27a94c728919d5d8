"""The OpenAI-compatible images API: POST /v1/images/generations, POST /v1/images/edits, GET /v1/models.

A model is a template that opted in with an `openai` mapping (app/templates/document.py
`OpenAIMapping`): the mapping says which params take the prompt, the size, the count, the image and
the mask. The jobs are ordinary jobs of the caller's (same queue, limits, storage, /v1/jobs); the
answer waits for them (GATEWAY_OPENAI_WAIT_SECONDS) and is OpenAI's shape, errors included.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from app.api import deps, doors
from app.api.deps import (
    PrincipalDep,
    SessionDep,
    SettingsDep,
    SignerDep,
    UncountedPrincipalDep,
    charge_refused,
)
from app.api.input_checks import RequestModel
from app.api.openai_errors import OPENAI_ERRORS, ImagesFailed, OpenAIRoute
from app.config import Settings
from app.db.models import Template, Upload
from app.domain import jobs, templates, uploads
from app.domain.errors import DomainError, NotFound, PayloadTooLarge, ValidationFailed
from app.domain.users import Principal
from app.storage.signing import UrlSigner
from app.templates import TemplateDocument
from app.templates.document import OpenAIMapping

router = APIRouter(tags=["openai-compatible images"], route_class=OpenAIRoute)

#: OpenAI's own bound on `n`; the user's limits (max_queued, jobs_per_day) apply too.
MAX_N = 10
_SIZE_RE = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")


class ImageGenerationRequest(RequestModel):
    # OpenAI's clients send members this gateway has no use for (background, moderation,
    # output_format...): they are ignored, not refused.
    model_config = ConfigDict(extra="ignore")

    model: str = Field(max_length=64, description="A template that opted in (GET /v1/models).")
    prompt: str = Field(min_length=1, max_length=32000)
    n: int = Field(default=1, ge=1, le=MAX_N, description="Images to make: one batch, or n jobs.")
    size: str | None = Field(
        default=None, max_length=16, description="`WxH` in pixels, or `auto` (the template's)."
    )
    response_format: Literal["url", "b64_json"] = "url"
    user: str | None = Field(
        default=None, max_length=256, description="Kept in the jobs' metadata as `openai_user`."
    )
    quality: str | None = Field(
        default=None, max_length=64, description="Passed on where the template maps it."
    )
    style: str | None = Field(
        default=None, max_length=64, description="Passed on where the template maps it."
    )


class ImageData(BaseModel):
    url: str | None = Field(default=None, description="A signed URL of the image (`response_format=url`).")
    b64_json: str | None = Field(default=None, description="The image, base64 (`response_format=b64_json`).")


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]


_IMAGES_RESPONSES: dict[int | str, dict[str, Any]] = {
    **OPENAI_ERRORS,
    502: {
        "model": OPENAI_ERRORS[400]["model"],
        "description": "A job failed or was canceled (`error.job_ids`).",
    },
    504: {
        "model": OPENAI_ERRORS[400]["model"],
        "description": "The jobs did not end within GATEWAY_OPENAI_WAIT_SECONDS; they go on: `error.job_ids` "
        "names them (GET /v1/jobs/{id}).",
    },
}


# ---- models ------------------------------------------------------------------------------------


async def _models(session: AsyncSession) -> list[tuple[Template, TemplateDocument]]:
    rows = await templates.all_by_name(session)
    docs = [(row, TemplateDocument.model_validate(row.document)) for row in rows]
    return [(row, doc) for row, doc in docs if doc.openai is not None]


def _model_view(row: Template) -> dict[str, Any]:
    return {
        "id": row.name,
        "object": "model",
        "created": int(row.created_at.timestamp()),
        "owned_by": "comfy-gateway",
    }


async def _model(session: AsyncSession, name: str) -> tuple[TemplateDocument, OpenAIMapping]:
    row = await templates.find(session, name)
    doc = TemplateDocument.model_validate(row.document) if row is not None else None
    if doc is None or doc.openai is None:
        raise NotFound(
            f"The model {name!r} does not exist; GET /v1/models lists the templates served here.",
            errors=[{"field": "model", "message": "no such model"}],
            code="model_not_found",
        )
    return doc, doc.openai


@router.get(
    "/v1/models",
    response_model=ModelList,
    responses=OPENAI_ERRORS,
    summary="List the templates usable as models",
)
async def list_models(session: SessionDep, principal: PrincipalDep) -> dict:
    return {"object": "list", "data": [_model_view(row) for row, _ in await _models(session)]}


@router.get("/v1/models/{model}", response_model=ModelOut, responses=OPENAI_ERRORS, summary="One model")
async def get_model(model: str, session: SessionDep, principal: PrincipalDep) -> dict:
    await _model(session, model)
    return _model_view(await templates.get_row(session, model))


# ---- images ------------------------------------------------------------------------------------


def _params(
    mapping: OpenAIMapping,
    request: Request,
    *,
    prompt: str,
    size: str | None,
    quality: str | None,
    style: str | None,
) -> dict[str, Any]:
    # Errors on a template param name the request field that set it.
    names = {mapping.prompt: "prompt"}
    params: dict[str, Any] = {mapping.prompt: prompt}
    if size is not None and size != "auto":
        match = _SIZE_RE.fullmatch(size)
        if match is None:
            raise ValidationFailed(
                "size must be 'WxH' in pixels (e.g. '512x512') or 'auto'.",
                errors=[{"field": "size", "message": "not WxH"}],
            )
        if mapping.size is None:
            raise ValidationFailed(
                "This model has a fixed size: leave 'size' out or send 'auto'.",
                errors=[{"field": "size", "message": "not mapped"}],
            )
        params[mapping.size[0]], params[mapping.size[1]] = int(match[1]), int(match[2])
        names.update({mapping.size[0]: "size", mapping.size[1]: "size"})
    for field, value in (("quality", quality), ("style", style)):
        target = getattr(mapping, field)
        # Not mapped: OpenAI's own values ("standard", "vivid"...) mean nothing to the template.
        if value is not None and target is not None:
            params[target] = value
            names[target] = field
    for field in ("n", "image", "mask"):
        target = getattr(mapping, field)
        if target is not None:
            names[target] = field
    request.state.openai_param_names = names
    return params


async def _run(
    request: Request,
    session: AsyncSession,
    principal: Principal,
    settings: Settings,
    signer: UrlSigner,
    *,
    model: str,
    mapping: OpenAIMapping,
    params: dict[str, Any],
    n: int,
    response_format: str,
    user: str | None,
    new_uploads: list[Upload],
) -> dict:
    if mapping.n is not None:
        params_list = [{**params, mapping.n: n}]
    else:
        params_list = [params for _ in range(n)]
    metadata: dict[str, Any] = {"via": "openai"}
    if user:
        metadata["openai_user"] = user
    made, subs = await doors.submit(
        request, session, principal, model, params_list, metadata=metadata, new_uploads=new_uploads
    )
    job_ids = [job.id for job in made]
    try:
        await session.close()  # no connection is held while waiting
        ended = await doors.wait_all(subs, settings.openai_wait_seconds)
    finally:
        for sub in subs:
            deps.state(request).bus.unsubscribe(sub)
    found, outputs = await doors.ended_jobs(session, principal, job_ids)
    if not ended and any(job.status not in jobs.TERMINAL for job in found):
        raise ImagesFailed(
            504,
            "timeout",
            f"The images are not ready after {settings.openai_wait_seconds:g} s; the jobs go on: "
            + ", ".join(job_ids)
            + " (GET /v1/jobs/{id}).",
            job_ids,
        )
    bad = [job for job in found if job.status != "succeeded"]
    if bad:
        reasons = "; ".join(
            f"{job.id} {job.status}" + (f": {job.error.get('message')}" if job.error else "") for job in bad
        )
        raise ImagesFailed(502, f"job_{bad[0].status}", f"The image job did not succeed: {reasons}.", job_ids)
    data = []
    for job in found:
        for output in outputs[job.id]:
            if not output.content_type.startswith("image/"):
                continue
            if response_format == "b64_json":
                data.append({"b64_json": await doors.output_b64(request, output)})
            else:
                data.append({"url": doors.absolute_url(request, signer.url(job.id, output.id))})
    return {"created": int(time.time()), "data": data}


@router.post(
    "/v1/images/generations",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    responses=_IMAGES_RESPONSES,
    summary="Create images from a prompt",
    description="OpenAI's `images.generate`: the model is a template that opted in; the answer waits for its "
    "jobs (GATEWAY_OPENAI_WAIT_SECONDS).",
)
async def generations(
    body: Annotated[ImageGenerationRequest, Body()],
    request: Request,
    session: SessionDep,
    principal: UncountedPrincipalDep,
    settings: SettingsDep,
    signer: SignerDep,
) -> dict:
    try:
        doc, mapping = await _model(session, body.model)
        if mapping.image is not None and doc.params[mapping.image].required:
            raise ValidationFailed(
                f"The model {body.model!r} edits images: use POST /v1/images/edits.",
                errors=[{"field": "model", "message": "an edit model"}],
            )
        params = _params(
            mapping, request, prompt=body.prompt, size=body.size, quality=body.quality, style=body.style
        )
    except DomainError:
        await charge_refused(request, session, principal)
        raise
    return await _run(
        request,
        session,
        principal,
        settings,
        signer,
        model=body.model,
        mapping=mapping,
        params=params,
        n=body.n,
        response_format=body.response_format,
        user=body.user,
        new_uploads=[],
    )


_EDIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "prompt", "model"],
                    "properties": {
                        "image": {
                            "type": "string",
                            "format": "binary",
                            "description": "The image to edit (also `image[]`).",
                        },
                        "mask": {
                            "type": "string",
                            "format": "binary",
                            "description": "Where to edit, where the template maps a mask.",
                        },
                        "prompt": {"type": "string"},
                        "model": {"type": "string"},
                        "n": {"type": "integer", "minimum": 1, "maximum": MAX_N, "default": 1},
                        "size": {"type": "string", "description": "`WxH`, where the template maps a size."},
                        "response_format": {"type": "string", "enum": ["url", "b64_json"], "default": "url"},
                        "user": {"type": "string"},
                    },
                }
            }
        },
    }
}


def _form_text(form: Any, name: str) -> str | None:
    value = form.get(name)
    if value is None or isinstance(value, UploadFile):
        return None
    return str(value)


@router.post(
    "/v1/images/edits",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    responses=_IMAGES_RESPONSES,
    openapi_extra=_EDIT_BODY,
    summary="Edit an image from a prompt",
    description="OpenAI's `images.edit` (multipart): the image (and mask) become uploads of the caller's, the "
    "model a template that maps `image`.",
)
async def edits(
    request: Request,
    session: SessionDep,
    principal: UncountedPrincipalDep,
    settings: SettingsDep,
    signer: SignerDep,
) -> dict:
    # Read after the key was checked (as POST /v1/uploads does): files are spooled to disk.
    try:
        form = await request.form(max_files=4, max_fields=32)
    except MultiPartException as exc:
        raise ValidationFailed(
            f"The body is not a valid multipart form: {exc.message}",
            errors=[{"field": "image", "message": "bad multipart body"}],
        ) from None
    new_uploads: list[Upload] = []
    try:
        try:
            body, mapping, params = await _edit_request(
                request, session, settings, principal, form, new_uploads
            )
        except DomainError:
            await charge_refused(request, session, principal)
            raise
        return await _run(
            request,
            session,
            principal,
            settings,
            signer,
            model=body.model,
            mapping=mapping,
            params=params,
            n=body.n,
            response_format=body.response_format,
            user=body.user,
            new_uploads=new_uploads,
        )
    finally:
        # Emptied once the jobs and their uploads are committed.
        for upload in new_uploads:
            await deps.state(request).storage.delete(upload.storage_key)
        await form.close()


async def _edit_request(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    form: Any,
    new_uploads: list[Upload],
) -> tuple[ImageGenerationRequest, OpenAIMapping, dict[str, Any]]:
    """The form's fields checked as a generation request's, and its files stored as the caller's uploads."""
    fields = {
        name: _form_text(form, name)
        for name in ("model", "prompt", "n", "size", "response_format", "user", "quality", "style")
    }
    try:
        body = ImageGenerationRequest.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:  # the first field named, as for JSON bodies
        first = exc.errors(include_url=False, include_input=False)[0]
        field = str(first["loc"][0]) if first.get("loc") else "prompt"
        raise ValidationFailed(
            f"Invalid value for '{field}': {first['msg']}.",
            errors=[{"field": field, "message": first["msg"]}],
        ) from None
    _, mapping = await _model(session, body.model)
    if mapping.image is None:
        raise ValidationFailed(
            f"The model {body.model!r} does not edit images: use POST /v1/images/generations.",
            errors=[{"field": "model", "message": "not an edit model"}],
        )
    params = _params(
        mapping, request, prompt=body.prompt, size=body.size, quality=body.quality, style=body.style
    )
    image = form.get("image") or form.get("image[]")
    if not isinstance(image, UploadFile):
        raise ValidationFailed(
            "Send the image to edit as the multipart file 'image'.",
            errors=[{"field": "image", "message": "missing"}],
        )
    mask = form.get("mask")
    if isinstance(mask, UploadFile) and mapping.mask is None:
        raise ValidationFailed(
            f"The model {body.model!r} takes no mask.", errors=[{"field": "mask", "message": "not mapped"}]
        )
    params[mapping.image] = await _store(session, settings, request, principal, image, "image", new_uploads)
    if isinstance(mask, UploadFile):
        assert mapping.mask is not None
        params[mapping.mask] = await _store(session, settings, request, principal, mask, "mask", new_uploads)
    return body, mapping, params


async def _store(
    session: AsyncSession,
    settings: Settings,
    request: Request,
    principal: Principal,
    file: UploadFile,
    field: str,
    new_uploads: list[Upload],
) -> str:
    """The file as an upload of the caller's (flushed, so each of n jobs finds it), for the jobs' image param."""
    if file.size is not None and file.size > settings.max_upload_bytes:
        raise PayloadTooLarge(
            f"The {field} is larger than {settings.max_upload_bytes} bytes.",
            errors=[{"field": field, "message": "too large"}],
        )
    try:
        upload = await uploads.store(
            session, deps.state(request).storage, settings, principal.user_id, file.filename, file.file
        )
    except ValidationFailed as exc:
        raise ValidationFailed(
            f"The {field}: {exc.detail}", errors=[{"field": field, "message": exc.detail}]
        ) from None
    new_uploads.append(upload)
    uploads.add(session, upload)
    await session.flush()
    return upload.id
