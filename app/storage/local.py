"""Outputs in a local directory: written to a temporary name, then renamed, so a reader never sees half a file."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import anyio

from app.storage.base import RangedObject, StoredObject

# Files up to this size are written in one go; larger ones in pieces of this size.
_BUFFER = 1024 * 1024
_SMALL = 128 * 1024


def _open_new(tmp: Path) -> BinaryIO:
    tmp.parent.mkdir(parents=True, exist_ok=True)
    return open(tmp, "wb")  # noqa: SIM115 - closed by _finish


def _finish(fh: BinaryIO | None, tmp: Path, final: Path, rest: list[bytes]) -> None:
    if fh is None:
        fh = _open_new(tmp)
    with fh:
        fh.writelines(rest)
    os.replace(tmp, final)


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def ensure_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    async def start(self) -> None:
        self.ensure_root()

    async def close(self) -> None:
        pass

    def path_for(self, key: str) -> Path:
        # Keys are made by the gateway, but a key that climbs out of the root is never honoured.
        pure = PurePosixPath(key)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts:
            raise ValueError(f"bad storage key: {key!r}")
        return self.root.joinpath(*pure.parts)

    async def write_stream(self, key: str, chunks: AsyncIterable[bytes]) -> StoredObject:
        """Bytes are gathered up to `_BUFFER` and written in one thread hop; a larger file is
        written buffer by buffer, so memory stays bounded whatever its size."""
        final = self.path_for(key)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.part")
        digest = hashlib.sha256()
        size = 0
        buffer: list[bytes] = []
        buffered = 0
        fh = None
        try:
            async for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                buffer.append(chunk)
                buffered += len(chunk)
                if buffered >= _BUFFER:
                    if fh is None:
                        fh = await anyio.to_thread.run_sync(_open_new, tmp)
                    await anyio.to_thread.run_sync(fh.writelines, buffer)
                    buffer, buffered = [], 0
            if fh is None and buffered <= _SMALL:
                # A small file (a PNG of a few KB, a text output) is written on the loop: the
                # thread hop cost more CPU than the write (as its reading, app/api/outputs.py).
                _finish(None, tmp, final, buffer)
            else:
                await anyio.to_thread.run_sync(_finish, fh, tmp, final, buffer)
        except BaseException:
            if fh is not None:
                fh.close()
            tmp.unlink(missing_ok=True)
            raise
        return StoredObject(key=key, size=size, sha256=digest.hexdigest())

    async def delete(self, key: str) -> None:
        await anyio.to_thread.run_sync(lambda: self.path_for(key).unlink(missing_ok=True))

    async def read_stream(self, key: str, chunk_size: int = _BUFFER) -> AsyncIterator[bytes]:
        """The stored bytes, piece by piece; FileNotFoundError when the key holds nothing."""
        async with await anyio.open_file(self.path_for(key), "rb") as fh:
            while chunk := await fh.read(chunk_size):
                yield chunk

    async def delete_prefix(self, prefix: str) -> None:
        """Delete every key under `prefix/` (a job's outputs and their conversions)."""
        folder = self.path_for(prefix.rstrip("/"))
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(folder, ignore_errors=True))

    async def exists(self, key: str) -> bool:
        return await anyio.to_thread.run_sync(self.path_for(key).is_file)

    # ---- serving -----------------------------------------------------------------------------

    def local_path(self, key: str) -> Path | None:
        return self.path_for(key)

    async def presigned_url(self, key: str, *, content_type: str, disposition: str, expires: int) -> None:
        return None

    async def get_range(self, key: str, range_header: str | None) -> RangedObject:
        """The whole file, whatever the Range: a valid answer to it (RFC 9110 §14.2). The api sends
        local files by `local_path` instead, which honours ranges."""
        size = (await anyio.to_thread.run_sync(self.path_for(key).stat)).st_size
        return RangedObject(status=200, headers={"Content-Length": str(size)}, body=self.read_stream(key))
