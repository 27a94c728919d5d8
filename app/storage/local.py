"""Outputs in a local directory: written to a temporary name, then renamed, so a reader never sees half a file."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import AsyncIterable
from pathlib import Path, PurePosixPath

import anyio

from app.storage.base import StoredObject


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def ensure_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, key: str) -> Path:
        # Keys are made by the gateway, but a key that climbs out of the root is never honoured.
        pure = PurePosixPath(key)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts:
            raise ValueError(f"bad storage key: {key!r}")
        return self.root.joinpath(*pure.parts)

    async def write_stream(self, key: str, chunks: AsyncIterable[bytes]) -> StoredObject:
        final = self.path_for(key)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.part")
        await anyio.to_thread.run_sync(lambda: final.parent.mkdir(parents=True, exist_ok=True))
        digest = hashlib.sha256()
        size = 0
        try:
            async with await anyio.open_file(tmp, "wb") as fh:
                async for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    await fh.write(chunk)
            await anyio.to_thread.run_sync(os.replace, tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return StoredObject(key=key, size=size, sha256=digest.hexdigest())

    async def delete(self, key: str) -> None:
        await anyio.to_thread.run_sync(lambda: self.path_for(key).unlink(missing_ok=True))

    async def exists(self, key: str) -> bool:
        return await anyio.to_thread.run_sync(self.path_for(key).is_file)
