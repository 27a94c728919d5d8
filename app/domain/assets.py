"""v2 assets: input files stored by their owner, named by their blake3 hash, one per content and user.

The gateway hashes what it received (the client's hash is only a check, `expected_hash`), so a
user can never mint an asset over bytes it does not have. Other users' assets are invisible:
a hash probe or a reference answers exactly as for bytes nobody has.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import AsyncIterator
from typing import Any, BinaryIO

import anyio
from blake3 import blake3
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db import assets as repo
from app.db.models import Asset, Output
from app.domain.errors import PayloadTooLarge
from app.domain.v2_errors import V2Error
from app.storage.base import Storage
from app.storage.images import NotAnImage, inspect_image

HASH_RE = re.compile(r"^blake3:[0-9a-f]{64}$")
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_MEDIA_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}$")
_CHUNK = 1024 * 1024


def check_hash(value: str, field: str = "hash") -> str:
    if not isinstance(value, str) or not HASH_RE.match(value):
        raise V2Error(
            422, "invalid_request", f"{field} must be 'blake3:' and 64 lowercase hex digits.", field=field
        )
    return value


def safe_file_path(name: str | None) -> str:
    """The client's name, kept to match workflow references by: no directory, no control
    characters, at most 255 characters."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in unicodedata.normalize("NFC", base) if unicodedata.category(c)[0] != "C").strip()
    return base[:255] or "upload.bin"


async def _hashed_chunks(fh: BinaryIO, hasher: Any) -> AsyncIterator[bytes]:
    while chunk := await anyio.to_thread.run_sync(fh.read, _CHUNK):
        hasher.update(chunk)
        yield chunk


def _content_type(fh: BinaryIO, claimed: str | None, max_pixels: int) -> str:
    # An image's type is read from its bytes; anything else keeps the client's word, and is served
    # as an attachment in a sandbox (app/api/v2/assets.py), so it cannot script the gateway's origin.
    try:
        return inspect_image(fh, max_pixels).content_type
    except NotAnImage:
        claimed = (claimed or "").strip().lower()
        if _MEDIA_TYPE_RE.match(claimed) and not claimed.startswith("image/"):
            return claimed
        return "application/octet-stream"


async def by_hash(session: AsyncSession, user_id: str, digest: str) -> Asset | None:
    return await repo.by_hash(session, user_id, digest)


async def store(
    session: AsyncSession,
    storage: Storage,
    settings: Settings,
    user_id: str,
    fh: BinaryIO,
    *,
    file_path: str | None,
    content_type: str | None,
    expected_hash: str | None,
) -> tuple[Asset, bool]:
    """Store the bytes as the user's asset (committed); returns it and whether it is new. The same
    bytes again: the existing asset, nothing stored twice."""
    if expected_hash is not None:
        check_hash(expected_hash, "expected_hash")
    ctype = await anyio.to_thread.run_sync(_content_type, fh, content_type, settings.max_image_pixels)
    asset_id = str(uuid.uuid4())
    key = f"assets/{user_id}/{asset_id}"
    hasher = blake3()
    obj = await storage.write_stream(key, _hashed_chunks(fh, hasher))
    digest = "blake3:" + hasher.hexdigest()
    await _check_received(storage, key, obj.size, settings.max_upload_bytes, digest, expected_hash)
    existing = await by_hash(session, user_id, digest)
    if existing is not None:
        await storage.delete(key)
        return existing, False
    asset = Asset(
        id=asset_id,
        user_id=user_id,
        hash=digest,
        file_path=safe_file_path(file_path),
        content_type=ctype,
        size=obj.size,
        storage_key=key,
    )
    return await _commit_new(session, storage, asset)


async def _check_received(
    storage: Storage, key: str, size: int, max_bytes: int, digest: str, expected_hash: str | None
) -> None:
    """The stored bytes are within the size limit and have the expected hash; if not, they are deleted."""
    if size > max_bytes:
        await storage.delete(key)
        raise PayloadTooLarge(f"The file is larger than {max_bytes} bytes.")
    if expected_hash is not None and expected_hash != digest:
        await storage.delete(key)
        raise V2Error(
            409,
            "hash_mismatch",
            "The bytes received do not have the expected_hash.",
            expected=expected_hash,
            actual=digest,
        )


async def _commit_new(session: AsyncSession, storage: Storage, asset: Asset) -> tuple[Asset, bool]:
    """Commit the new asset's row; if the same bytes won a race meanwhile, that asset (and the file is deleted)."""
    # Read before the commit: after a rollback the row's attributes are not to be loaded again.
    key, user_id, digest = asset.storage_key, asset.user_id, asset.hash
    repo.add(session, asset)
    try:
        await session.commit()
    except IntegrityError:
        # The same bytes, sent at the same moment by another request of the user's: that one won.
        await session.rollback()
        await storage.delete(key)
        existing = await by_hash(session, user_id, digest)
        if existing is None:
            raise
        return existing, False
    except BaseException:
        await storage.delete(key)
        raise
    return asset, True


async def get_owned(session: AsyncSession, user_id: str, asset_id: str) -> Asset | Output:
    """The user's asset: an upload, or an output of one of the user's jobs (outputs are assets)."""
    if _UUID_RE.match(asset_id or ""):
        asset = await repo.get_owned(session, user_id, asset_id)
        if asset is not None:
            return asset
        output = await repo.owned_output(session, user_id, asset_id)
        if output is not None:
            return output
    raise V2Error(404, "not_found", f"There is no asset {asset_id!r}.")


async def by_file_path(session: AsyncSession, user_id: str, file_path: str) -> Asset | None:
    return await repo.by_file_path(session, user_id, file_path)


async def find(session: AsyncSession, asset_id: str) -> Asset | None:
    """Any user's asset (a signed URL names it)."""
    return await repo.get(session, asset_id)


async def find_output(session: AsyncSession, output_id: str) -> Output | None:
    """Any user's output (a signed URL names it)."""
    return await repo.get_output(session, output_id)


async def delete(session: AsyncSession, item: Asset | Output) -> str:
    """Delete the row (the caller commits, then deletes the bytes under the returned key)."""
    await repo.delete(session, item)
    return item.storage_key
