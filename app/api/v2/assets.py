"""Comfy API v2 assets: upload (multipart; 201 new, 200 the same bytes again), the hash probe and
mint, metadata, content (Range), delete. Outputs of the caller's jobs are assets too."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ConfigDict, Field
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from app.api.deps import PrincipalDep, SessionDep, SettingsDep, SignerDep, StorageDep, authorize
from app.api.input_checks import RequestModel
from app.api.outputs import content_disposition, serve_stored
from app.api.v2 import views
from app.db.models import Asset, Output
from app.domain import assets
from app.domain.errors import PayloadTooLarge
from app.domain.v2_errors import V2Error

router = APIRouter(prefix="/api/v2", tags=["v2"])
_bearer = HTTPBearer(auto_error=False)


class FromHashRequest(RequestModel):
    model_config = ConfigDict(extra="forbid")

    hash: str
    file_path: str | None = Field(default=None, max_length=255)
    tags: list[str] | None = None


def _text(form, name: str) -> str | None:  # noqa: ANN001
    value = form.get(name)
    return value if isinstance(value, str) else None


@router.post("/assets", status_code=201)
async def upload(
    request: Request,
    response: Response,
    session: SessionDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    storage: StorageDep,
    signer: SignerDep,
) -> dict:
    # Read after the key was checked (see POST /v1/uploads): an unknown caller spools nothing.
    try:
        form = await request.form(max_files=1, max_fields=40)
    except MultiPartException as exc:
        raise V2Error(
            422, "invalid_request", f"The body is not a valid multipart form: {exc.message}", field="file"
        ) from None
    try:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise V2Error(
                422, "invalid_request", "Send the bytes as the multipart field 'file'.", field="file"
            )
        if file.size is not None and file.size > settings.max_upload_bytes:
            raise PayloadTooLarge(f"The file is larger than {settings.max_upload_bytes} bytes.")
        asset, new = await assets.store(
            session,
            storage,
            settings,
            principal.user_id,
            file.file,
            file_path=_text(form, "file_path") or file.filename,
            content_type=_text(form, "content_type") or file.content_type,
            expected_hash=_text(form, "expected_hash"),
        )
    finally:
        await form.close()
    if not new:
        response.status_code = 200
    return views.asset_view(asset, base=views.base_url(request, settings), signer=signer, created_new=new)


@router.head("/assets/by-hash/{digest}")
async def probe(digest: str, session: SessionDep, principal: PrincipalDep) -> Response:
    """200: the caller has these bytes (it may mint from them); 404 otherwise, also when only
    another user has them."""
    assets.check_hash(digest)
    if await assets.by_hash(session, principal.user_id, digest) is None:
        return Response(status_code=404)
    return Response(status_code=200)


@router.post("/assets/from-hash")
async def from_hash(
    body: FromHashRequest,
    request: Request,
    session: SessionDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    signer: SignerDep,
) -> dict:
    """The caller's asset of these bytes (one per content: the same id each time)."""
    assets.check_hash(body.hash)
    asset = await assets.by_hash(session, principal.user_id, body.hash)
    if asset is None:
        raise V2Error(404, "blob_not_found", "You have no asset with these bytes; upload them.", field="hash")
    return views.asset_view(asset, base=views.base_url(request, settings), signer=signer, created_new=False)


@router.get("/assets/{asset_id}")
async def get_asset(
    asset_id: str,
    request: Request,
    session: SessionDep,
    principal: PrincipalDep,
    settings: SettingsDep,
    signer: SignerDep,
) -> dict:
    item = await assets.get_owned(session, principal.user_id, asset_id)
    return views.asset_view(item, base=views.base_url(request, settings), signer=signer)


@router.delete("/assets/{asset_id}", status_code=204)
async def delete_asset(
    asset_id: str, session: SessionDep, principal: PrincipalDep, storage: StorageDep
) -> Response:
    item = await assets.get_owned(session, principal.user_id, asset_id)
    key = await assets.delete(session, item)
    await session.commit()
    await storage.delete(key)
    return Response(status_code=204)


@router.get("/assets/{asset_id}/content")
async def content(
    asset_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    signer: SignerDep,
    storage: StorageDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    expires: Annotated[str | None, Query(max_length=20)] = None,
    signature: Annotated[str | None, Query(max_length=100)] = None,
) -> Response:
    """The bytes (Range: 206). The `url` of an output or asset is signed, so it works without a key
    until `url_expires_at`; otherwise the owner's key is needed."""
    item: Asset | Output | None = None
    if expires is not None and signature is not None:
        if signer.verify(views.ASSET_SIGNING_SCOPE, asset_id, expires, signature):
            item = await assets.find(session, asset_id)
        else:
            output = await assets.find_output(session, asset_id)
            if output is not None and signer.verify(output.job_id, output.id, expires, signature):
                item = output
    if item is None:
        principal = await authorize(
            request, session, settings, credentials.credentials if credentials else None
        )
        item = await assets.get_owned(session, principal.user_id, asset_id)
    await session.close()
    is_output = isinstance(item, Output)
    name = item.filename if isinstance(item, Output) else item.file_path
    ctype = item.content_type
    headers = {"Cache-Control": "private, no-cache", "X-Content-Type-Options": "nosniff"}
    if is_output or ctype.startswith(("image/", "video/", "audio/")):
        headers["Content-Disposition"] = content_disposition(name)
    else:
        # Bytes whose type the client named: never rendered as a page of the gateway's origin.
        headers["Content-Disposition"] = content_disposition(name).replace("inline", "attachment", 1)
        headers["Content-Security-Policy"] = "sandbox"
    gone = V2Error(404, "not_found", "The asset's bytes are no longer stored.")
    return await serve_stored(
        storage, settings, request, item.storage_key, ctype, headers, etag=f'"{item.id}"', gone=gone
    )
