"""GET /v1/jobs/{id}/outputs/{output_id}: the bytes from the gateway's own storage.

A valid, unexpired signature is enough (so an <img src> works); otherwise the owner's key is needed.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select

from app.api.deps import SessionDep, SettingsDep, SignerDep, StorageDep, authorize
from app.api.schemas import PROBLEMS
from app.db.models import Job, Output
from app.domain.errors import NotFound

router = APIRouter(tags=["outputs"])
_bearer = HTTPBearer(auto_error=False)


@router.get(
    "/v1/jobs/{job_id}/outputs/{output_id}",
    responses={**PROBLEMS, 200: {"content": {"image/png": {}, "application/octet-stream": {}}}, 304: {}},
    response_class=FileResponse,
)
async def get_output(
    job_id: str,
    output_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    signer: SignerDep,
    storage: StorageDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    expires: Annotated[str | None, Query(max_length=20)] = None,
    signature: Annotated[str | None, Query(max_length=100)] = None,
) -> Response:
    signed = signer.verify(job_id, output_id, expires, signature)
    stmt = select(Output).join(Job, Job.id == Output.job_id).where(Output.id == output_id, Output.job_id == job_id)
    if not signed:
        principal = await authorize(request, session, settings, credentials.credentials if credentials else None)
        stmt = stmt.where(Job.user_id == principal.user_id)
    output = (await session.execute(stmt)).scalar_one_or_none()
    if output is None:
        raise NotFound(f"There is no output {output_id!r} of job {job_id!r}.")

    etag = f'"{output.sha256}"'
    # Outputs never change, so a signed URL may be cached until it expires; a keyed request stays private.
    cache = "private, max-age=31536000, immutable" if signed else "private, no-cache"
    headers = {"ETag": etag, "Cache-Control": cache}
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    path = storage.path_for(output.storage_key)
    if not path.is_file():
        raise NotFound("The output's file is no longer stored.")
    return FileResponse(
        path,
        media_type=output.content_type,
        filename=output.filename,
        content_disposition_type="inline",
        headers=headers,
    )
