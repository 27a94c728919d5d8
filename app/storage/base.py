"""The storage interface: outputs (and later uploads) live in the gateway's own storage."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    size: int
    sha256: str


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
