"""The storage interface: outputs (and later uploads) live in the gateway's own storage."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class RangedObject:
    """A GET of (part of) an object: the status (200, 206), headers to pass on, and the body."""

    status: int
    headers: dict[str, str]
    body: AsyncIterator[bytes]


class RangeNotSatisfiable(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


class Storage(Protocol):
    async def write_stream(self, key: str, chunks: AsyncIterable[bytes]) -> StoredObject:
        """Store the bytes under `key` as they arrive, never holding the whole file in memory."""
        ...

    def read_stream(self, key: str, chunk_size: int = ...) -> AsyncIterator[bytes]:
        """The stored bytes, piece by piece; FileNotFoundError when the key holds nothing."""
        ...

    async def delete(self, key: str) -> None: ...

    async def delete_prefix(self, prefix: str) -> None:
        """Delete every key under `prefix/`."""
        ...

    async def exists(self, key: str) -> bool: ...

    # ---- serving: what each kind of storage can offer the HTTP layer ------------------------------

    def local_path(self, key: str) -> Path | None:
        """The file holding `key` when the storage is a local directory (the web server then sends it
        with Range and conditional requests); None when the bytes live elsewhere."""
        ...

    async def presigned_url(
        self, key: str, *, content_type: str, disposition: str, expires: int
    ) -> str | None:
        """A short-lived URL a client can GET the object from directly; None when not supported."""
        ...

    async def get_range(self, key: str, range_header: str | None) -> RangedObject:
        """The object, or the part a `Range` header asks for; FileNotFoundError, or
        RangeNotSatisfiable with the object's size."""
        ...
