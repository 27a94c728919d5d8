"""A streaming multipart/form-data encoder for uploads.

httpx's own multipart support reads file objects synchronously and does not accept async
iterables, so an upload coming from the gateway's own request body (an async stream) would have
to be buffered whole first. This encoder streams any source: bytes, a sync or async file-like
object (anything with `read(n)`, e.g. starlette's `UploadFile`), or an (async) iterable of bytes.
"""

from __future__ import annotations

import asyncio
import inspect
import mimetypes
import os
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

CHUNK_SIZE = 64 * 1024

# The same escaping browsers (and httpx) apply to names in Content-Disposition.
_REPLACEMENTS = {'"': "%22", "\\": "\\\\"}
_REPLACEMENTS.update({chr(c): f"%{c:02X}" for c in range(0x20) if c != 0x1B})
_ESCAPE_RE = re.compile("|".join(re.escape(c) for c in _REPLACEMENTS))


def _quote(value: str) -> str:
    return _ESCAPE_RE.sub(lambda m: _REPLACEMENTS[m.group(0)], value)


def guess_content_type(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


async def iter_source(data: Any, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
    """Yield the bytes of an upload source without loading it whole (except plain bytes)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        yield bytes(data)
        return
    read = getattr(data, "read", None)
    if callable(read):
        is_async = inspect.iscoroutinefunction(read)
        while True:
            if is_async:
                chunk = await read(chunk_size)
            else:
                # A sync file read can block (disk, network file systems): keep it off the loop.
                chunk = await asyncio.to_thread(read, chunk_size)
                if inspect.isawaitable(chunk):  # read() was async after all (a wrapped coroutine)
                    chunk = await chunk
            if not chunk:
                return
            yield chunk.encode() if isinstance(chunk, str) else bytes(chunk)
    elif isinstance(data, AsyncIterable):
        async for chunk in data:
            yield bytes(chunk)
    elif isinstance(data, Iterable) and not isinstance(data, str):
        for chunk in data:
            yield bytes(chunk)
    else:
        raise TypeError(
            f"cannot upload a {type(data).__name__}: pass bytes, a file-like object or an (async) iterable of bytes"
        )


class MultipartForm:
    """Text fields plus one file field, encoded as multipart/form-data."""

    def __init__(
        self,
        fields: dict[str, str],
        file_field: str,
        filename: str,
        data: Any,
        content_type: str | None = None,
    ):
        self.boundary = os.urandom(16).hex()
        self.content_type = f"multipart/form-data; boundary={self.boundary}"
        head = bytearray()
        for name, value in fields.items():
            head += (
                f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'.encode()
            )
            head += value.encode() + b"\r\n"
        head += (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quote(file_field)}"; '
            f'filename="{_quote(filename)}"\r\n'
            f"Content-Type: {content_type or guess_content_type(filename)}\r\n\r\n"
        ).encode()
        self._head = bytes(head)
        self._tail = f"\r\n--{self.boundary}--\r\n".encode()
        self._data = data

    def body(self) -> bytes | AsyncIterator[bytes]:
        """The whole body as bytes when the data is bytes (so a Content-Length is sent), else an
        async iterator (sent with chunked transfer encoding)."""
        if isinstance(self._data, (bytes, bytearray, memoryview)):
            return self._head + bytes(self._data) + self._tail
        return self._stream()

    async def _stream(self) -> AsyncIterator[bytes]:
        yield self._head
        async for chunk in iter_source(self._data):
            if chunk:
                yield chunk
        yield self._tail
