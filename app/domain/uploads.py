"""Uploads: input images a user stores, and the image params of a job that name them.

An image param takes an upload id (of the caller's own uploads), a `data:` URI (stored as an upload
of the caller's), or an `https://` URL (fetched by the gateway, see app/domain/fetch.py). What a job
will stage onto its backend is recorded in `job.inputs`; app/dispatch/staging.py does the staging.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import tempfile
import unicodedata
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, BinaryIO, cast

import anyio
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db import uploads as repo
from app.db.models import Upload
from app.domain import staged_inputs
from app.domain.errors import NotFound, PayloadTooLarge, QuotaExceeded, ValidationFailed
from app.domain.staged_inputs import StagedInput
from app.domain.views import rfc3339
from app.storage.base import Storage
from app.storage.images import NotAnImage, inspect_image

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_DATA_URI_RE = re.compile(
    r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[\w.+-]+=[\w.+-]+)*);base64,(?P<data>.*)$", re.S
)
_CHUNK = 1024 * 1024

# Fetches an image URL into a file object (bounded in size and time; app/domain/fetch.py);
# raises FetchFailed.
UrlFetcher = Callable[[str, BinaryIO], Awaitable[None]]


class FetchFailed(ValueError):
    """An image URL could not be fetched; the message completes "Param 'x' ..." for the user."""


def safe_filename(name: str | None, extension: str) -> str:
    """The client's file name reduced to something safe to show and to put in a header: no path,
    no control characters, at most 100 characters; the extension is the sniffed one."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in unicodedata.normalize("NFC", base) if unicodedata.category(c)[0] != "C")
    stem = base.rsplit(".", 1)[0].strip(" .")[:100] or "upload"
    return stem + extension


def upload_view(upload: Upload) -> dict[str, Any]:
    return {
        "id": upload.id,
        "filename": upload.filename,
        "content_type": upload.content_type,
        "size": upload.size,
        "sha256": upload.sha256,
        "width": upload.width,
        "height": upload.height,
        "created_at": rfc3339(upload.created_at),
    }


async def _file_chunks(fh: BinaryIO) -> AsyncIterator[bytes]:
    while chunk := await anyio.to_thread.run_sync(fh.read, _CHUNK):
        yield chunk


async def _usage(session: AsyncSession, user_id: str, pending: Sequence[Upload]) -> tuple[int, int]:
    """The user's stored uploads (count, bytes), with `pending` ones of this request not yet committed."""
    count, size = await repo.totals(session, user_id)
    return count + len(pending), size + sum(u.size for u in pending)


def _over_quota(limit: str, quota: int, used: int, what: str) -> QuotaExceeded:
    return QuotaExceeded(
        f"Your uploads would exceed your storage quota: {what} ({limit}={quota}); delete some uploads first.",
        limit=limit,
        quota=quota,
        used=used,
    )


async def store(
    session: AsyncSession,
    storage: Storage,
    settings: Settings,
    user_id: str,
    filename: str | None,
    fh: BinaryIO,
    pending: Sequence[Upload] = (),
) -> Upload:
    """Sniff the file and copy it into storage; returns its row, not yet added to the session (the
    caller adds and commits it, or deletes the stored file). Not an image: 422, nothing stored.
    Over the user's quota (GATEWAY_MAX_UPLOADS_PER_USER, _UPLOAD_BYTES_PER_USER; `pending` are this
    request's uploads not yet committed): 409, nothing stored. Two requests racing may both fit;
    the overshoot is bounded by one file each."""
    count, used = await _usage(session, user_id, pending)
    if count >= settings.max_uploads_per_user:
        raise _over_quota(
            "max_uploads_per_user", settings.max_uploads_per_user, count, f"you have {count} uploads"
        )
    try:
        info = await anyio.to_thread.run_sync(
            inspect_image, fh, settings.max_image_pixels, settings.max_image_frames
        )
    except NotAnImage as exc:
        raise ValidationFailed(str(exc), errors=[{"field": "file", "message": str(exc)}]) from None
    upload_id = str(uuid.uuid4())
    key = f"uploads/{user_id}/{upload_id}{info.extension}"
    obj = await storage.write_stream(key, _file_chunks(fh))
    if obj.size > settings.max_upload_bytes:
        await storage.delete(key)
        raise PayloadTooLarge(f"The file is larger than {settings.max_upload_bytes} bytes.")
    if used + obj.size > settings.max_upload_bytes_per_user:
        await storage.delete(key)
        raise _over_quota(
            "max_upload_bytes_per_user",
            settings.max_upload_bytes_per_user,
            used,
            f"you store {used} bytes and this file has {obj.size}",
        )
    upload = Upload(
        id=upload_id,
        user_id=user_id,
        filename=safe_filename(filename, info.extension),
        content_type=info.content_type,
        size=obj.size,
        sha256=obj.sha256,
        width=info.width,
        height=info.height,
        storage_key=key,
    )
    return upload


def add(session: AsyncSession, upload: Upload) -> None:
    """Keep a stored upload's row in the request's transaction (the caller commits)."""
    repo.add(session, upload)


async def get_owned(session: AsyncSession, user_id: str, upload_id: str) -> Upload:
    upload = None
    if _UUID_RE.match(upload_id):
        upload = await repo.get_owned(session, user_id, upload_id)
    if upload is None:
        raise NotFound(f"There is no upload {upload_id!r}.")
    return upload


async def delete(session: AsyncSession, user_id: str, upload_id: str) -> str:
    """Delete the row (the caller commits, then deletes the file under the returned key). Jobs that
    still need it to be staged fail with `input_missing` when they are dispatched."""
    upload = await get_owned(session, user_id, upload_id)
    await repo.delete_row(session, upload)
    return upload.storage_key


def _decode_data_uri(value: str, limit: int, param: str) -> io.BytesIO:
    match = _DATA_URI_RE.match(value)
    if match is None:
        raise _bad(param, "is not a base64 data: URI (data:image/png;base64,...)")
    data = match.group("data").strip()
    # Checked before decoding, so that an oversized URI costs no memory beyond the request itself.
    if len(data) * 3 // 4 > limit + 3:
        raise _bad(param, f"holds more than {limit} bytes")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(param, "is not valid base64") from None
    if len(raw) > limit:
        raise _bad(param, f"holds more than {limit} bytes")
    return io.BytesIO(raw)


def _bad(param: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"Param {param!r} {message}.", errors=[{"param": param, "message": message}])


async def resolve_images(
    session: AsyncSession,
    storage: Storage,
    settings: Settings,
    user_id: str,
    image_params: dict[str, tuple[list[tuple[str, str]], str | None]],
    params: dict[str, Any],
    new_uploads: list[Upload],
    fetch_url: UrlFetcher | None = None,
) -> list[dict[str, Any]]:
    """Turn each image param's value into one of the caller's uploads; returns `job.inputs`.

    `image_params` is name -> (binds, mask_of). `params` is changed in place: each image param
    then holds its upload's id (a data: URI or URL becomes a new upload, so the job can be
    re-staged and reproduced): those new uploads are appended to `new_uploads`, for the caller to
    add to the session with the job, or to delete from storage if the request fails after all. Another user's upload id answers exactly
    like an unknown one.
    """
    inputs: list[StagedInput] = []
    for name, (binds, mask_of) in image_params.items():
        value = params.get(name)
        if not isinstance(value, str):
            continue
        if value.startswith("data:"):
            fh: BinaryIO = _decode_data_uri(value, settings.max_data_uri_bytes, name)
            upload = await _store_input(session, storage, settings, user_id, f"{name}", fh, new_uploads, name)
        elif value.lower().startswith(("https://", "http://")):
            if fetch_url is None:
                raise _bad(
                    name, "is a URL, and this gateway does not fetch URL inputs; upload the image instead"
                )
            upload = await _fetch_input(
                session, storage, settings, user_id, value, fetch_url, new_uploads, name
            )
        else:
            try:
                upload = await get_owned(session, user_id, value)
            except NotFound:
                raise _bad(
                    name, "names no upload of yours (give an upload id, an https:// URL or a data: URI)"
                ) from None
        params[name] = upload.id
        inputs.append(StagedInput.of(name, upload, binds, mask_of))
    return staged_inputs.stored(inputs)


async def _store_input(
    session: AsyncSession,
    storage: Storage,
    settings: Settings,
    user_id: str,
    filename: str,
    fh: BinaryIO,
    new_uploads: list[Upload],
    param: str,
) -> Upload:
    try:
        upload = await store(session, storage, settings, user_id, filename, fh, new_uploads)
    except ValidationFailed as exc:
        raise _bad(param, exc.detail[0].lower() + exc.detail[1:].rstrip(".")) from None
    except PayloadTooLarge as exc:
        raise _bad(param, exc.detail[0].lower() + exc.detail[1:].rstrip(".")) from None
    new_uploads.append(upload)
    return upload


async def _fetch_input(
    session: AsyncSession,
    storage: Storage,
    settings: Settings,
    user_id: str,
    url: str,
    fetch_url: UrlFetcher,
    new_uploads: list[Upload],
    param: str,
) -> Upload:
    # Spooled: small images stay in memory, larger ones go to a temporary file; the fetcher
    # stops at GATEWAY_MAX_UPLOAD_BYTES.
    with tempfile.SpooledTemporaryFile(max_size=_CHUNK) as spooled:
        fh = cast(BinaryIO, spooled)  # a binary file, which typeshed does not say
        try:
            await fetch_url(url, fh)
        except FetchFailed as exc:
            raise _bad(param, str(exc)) from None
        name = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        return await _store_input(session, storage, settings, user_id, name, fh, new_uploads, param)
