"""GET /v1/jobs/{id}/outputs/{output_id}: the bytes from the gateway's own storage.

A valid, unexpired signature is enough (so an <img src> works); otherwise the owner's key is needed.
Range requests (206, 416) come from Starlette's FileResponse; the ETag is the content's sha256.
`?format=webp|jpeg&quality=` converts an image output, once per format and quality level: the result is kept in storage.
Every output is served nosniff and sandboxed (CSP); SVG and other active types as attachments.
"""

from __future__ import annotations

import stat
import time
from email.utils import formatdate
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.api import deps
from app.api.deps import authorize
from app.api.schemas import PROBLEMS
from app.config import Settings
from app.domain import jobs
from app.domain.conversions import converted
from app.domain.errors import NotFound
from app.storage.base import RangeNotSatisfiable, Storage

router = APIRouter(tags=["outputs"])
_bearer = HTTPBearer(auto_error=False)


# Types a browser would run as a document (script included) if shown inline: downloaded instead.
_ACTIVE_TYPES = frozenset(
    {
        "image/svg+xml",
        "text/html",
        "application/xhtml+xml",
        "text/xml",
        "application/xml",
        "text/javascript",
        "application/javascript",
    }
)
# Whatever a file holds, it cannot run script, load anything or be re-typed by the browser in the
# gateway's origin, where the users' keys and pages live.
SAFETY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
}


# Local files up to this size are read on the event loop's thread (a page-cache read of this much
# takes tens of microseconds); larger ones, and every Range request, go through FileResponse.
SMALL_FILE = 128 * 1024


def content_disposition(filename: str, content_type: str = "") -> str:
    """`inline` (`attachment` for active types) with an ASCII fallback name and the exact name as
    RFC 6266 `filename*` (RFC 5987): no quote, backslash, control character or path survives into the header."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1] or "output"
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\;%' else "_" for c in name)
    kind = "attachment" if content_type.split(";")[0].strip().lower() in _ACTIVE_TYPES else "inline"
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def _signed_cache(expires: str | None) -> str:
    # A cache must not outlive the URL: once it expires, the file needs a fresh signature.
    remaining = max(0, int(expires or 0) - int(time.time()))
    return f"private, max-age={remaining}, immutable"


@router.get(
    "/v1/jobs/{job_id}/outputs/{output_id}",
    responses={
        **PROBLEMS,
        200: {"content": {"image/png": {}, "application/octet-stream": {}}},
        206: {},
        304: {},
        307: {},
        416: {},
    },
    response_class=FileResponse,
)
async def get_output(
    job_id: str,
    output_id: str,
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    expires: Annotated[str | None, Query(max_length=20)] = None,
    signature: Annotated[str | None, Query(max_length=100)] = None,
    format: Annotated[Literal["webp", "jpeg"] | None, Query(description="Convert an image output.")] = None,
    quality: Annotated[
        int,
        Query(
            ge=1,
            le=100,
            description="Quality of a converted image; snaps to the nearest of GATEWAY_CONVERSION_QUALITIES.",
        ),
    ] = 85,
) -> Response:
    # The gateway's services from its state and a session of the route's own, not dependencies:
    # FastAPI's resolution of each (a session's is a generator in an exit stack) cost more than
    # the lookup on the download every finished job gets.
    gateway = deps.state(request)
    settings, signer, storage = gateway.settings, gateway.signer, gateway.storage
    signed = signer.verify(job_id, output_id, expires, signature)
    # The request is answered from storage alone: no database connection is held while it streams.
    async with gateway.sessionmaker() as session:
        owner = None
        if not signed:
            principal = await authorize(
                request, session, settings, credentials.credentials if credentials else None
            )
            owner = principal.user_id
        output = await jobs.find_output(session, job_id, output_id, user_id=owner)

    key, content_type, filename, etag = (
        output.storage_key,
        output.content_type,
        output.filename,
        f'"{output.sha256}"',
    )
    if format is not None:
        key, content_type, filename, quality = await converted(storage, output, format, quality, settings)
        etag = f'"{output.sha256}-{format}-{quality}"'
    # Outputs never change, so a signed URL may be cached until it expires; a keyed request stays private.
    cache = _signed_cache(expires) if signed else "private, no-cache"
    headers = {
        "ETag": etag,
        "Cache-Control": cache,
        "Content-Disposition": content_disposition(filename, content_type),
        **SAFETY_HEADERS,
    }
    if (
        etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]
        or request.headers.get("if-none-match") == "*"
    ):
        return Response(
            status_code=304, headers={k: v for k, v in headers.items() if k != "Content-Disposition"}
        )
    gone = NotFound("The output's file is no longer stored.")
    return await serve_stored(storage, settings, request, key, content_type, headers, etag=etag, gone=gone)


async def serve_stored(
    storage: Storage,
    settings: Settings,
    request: Request,
    key: str,
    content_type: str,
    headers: dict[str, str],
    *,
    etag: str,
    gone: Exception,
) -> Response:
    """The stored bytes as the storage can best serve them: a local file (Range by the web server),
    a redirect to a presigned URL (GATEWAY_S3_SERVE=redirect), or streamed through the gateway."""
    path = storage.local_path(key)
    if path is not None:
        try:
            info = path.stat()
        except OSError:
            raise gone from None
        if not stat.S_ISREG(info.st_mode):
            raise gone
        if info.st_size <= SMALL_FILE and "range" not in request.headers:
            # Read at once and sent in one piece: FileResponse would open, read and close it in
            # three hops to a worker thread, which cost a small file several times its read.
            return Response(
                path.read_bytes(),
                media_type=content_type,
                headers={
                    **headers,
                    "Accept-Ranges": "bytes",
                    "Last-Modified": formatdate(info.st_mtime, usegmt=True),
                },
            )
        return FileResponse(path, media_type=content_type, headers=headers, stat_result=info)
    headers = {**headers, "ETag": etag}
    if settings.s3_serve == "redirect":
        url = await storage.presigned_url(
            key,
            content_type=content_type,
            disposition=headers["Content-Disposition"],
            expires=settings.s3_presign_seconds,
        )
        if url is not None:
            # The presigned URL expires soon, so the redirect itself must not be cached; the client
            # sends its Range header on to the bucket, which answers it.
            return RedirectResponse(
                url, status_code=307, headers={"Cache-Control": "private, no-store", "ETag": etag}
            )
    try:
        obj = await storage.get_range(key, request.headers.get("range"))
    except FileNotFoundError:
        raise gone from None
    except RangeNotSatisfiable as exc:
        return Response(status_code=416, headers={"Content-Range": f"bytes */{exc.size}"})
    return StreamingResponse(
        obj.body, status_code=obj.status, media_type=content_type, headers={**headers, **obj.headers}
    )
