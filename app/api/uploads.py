"""POST /v1/uploads (an input image for the caller), GET and DELETE /v1/uploads/{id}."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from app.api.deps import PrincipalDep, SessionDep, SettingsDep, StorageDep
from app.api.schemas import PROBLEMS, UploadOut
from app.domain import uploads
from app.domain.errors import PayloadTooLarge, ValidationFailed

router = APIRouter(tags=["uploads"])

# Room for the multipart framing around the file (boundaries, part headers, small fields).
MULTIPART_OVERHEAD = 64 * 1024

_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


@router.post(
    "/v1/uploads", status_code=201, response_model=UploadOut, responses=PROBLEMS, openapi_extra=_BODY
)
async def create_upload(
    request: Request, session: SessionDep, principal: PrincipalDep, settings: SettingsDep, storage: StorageDep
) -> dict:
    # The form is read here, after the key was checked, not by FastAPI before the route runs:
    # an unauthenticated client must not make the gateway spool a large body. Starlette spools
    # each file part to a temporary file beyond 1 MiB (so memory stays bounded), and the body
    # limit of this path (GATEWAY_MAX_UPLOAD_BYTES plus the framing) stops a larger one.
    try:
        form = await request.form(max_files=1, max_fields=10)
    except MultiPartException as exc:
        raise ValidationFailed(
            f"The body is not a valid multipart form: {exc.message}",
            errors=[{"field": "file", "message": "bad multipart body"}],
        ) from None
    try:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise ValidationFailed(
                "Send the image as the multipart field 'file'.",
                errors=[{"field": "file", "message": "missing"}],
            )
        if file.size is not None and file.size > settings.max_upload_bytes:
            raise PayloadTooLarge(f"The file is larger than {settings.max_upload_bytes} bytes.")
        upload = await uploads.store(session, storage, settings, principal.user_id, file.filename, file.file)
        uploads.add(session, upload)
        try:
            await session.commit()
        except BaseException:
            await storage.delete(upload.storage_key)
            raise
        return uploads.upload_view(upload)
    finally:
        await form.close()


@router.get("/v1/uploads/{upload_id}", response_model=UploadOut, responses=PROBLEMS)
async def get_upload(upload_id: str, session: SessionDep, principal: PrincipalDep) -> dict:
    return uploads.upload_view(await uploads.get_owned(session, principal.user_id, upload_id))


@router.delete("/v1/uploads/{upload_id}", status_code=204, responses=PROBLEMS)
async def delete_upload(
    upload_id: str, session: SessionDep, principal: PrincipalDep, storage: StorageDep
) -> None:
    key = await uploads.delete(session, principal.user_id, upload_id)
    await session.commit()
    await storage.delete(key)
