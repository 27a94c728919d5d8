"""Image outputs converted on request (`?format=webp|jpeg&quality=`), kept in storage once made.

The converted file lives next to the original, under the job's prefix, so deleting a job's
files (DELETE /v1/jobs/{id}, retention) removes its conversions too. Pillow runs in a worker
thread: a conversion never blocks the event loop.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import PurePosixPath

import anyio
from PIL import Image

from app.db.models import Output
from app.domain.errors import NotFound, ValidationFailed
from app.storage.base import Storage

FORMATS = {"webp": ("WEBP", "image/webp", ".webp"), "jpeg": ("JPEG", "image/jpeg", ".jpg")}
# Raster formats Pillow reads that ComfyUI's image nodes write.
CONVERTIBLE = {"image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "image/tiff"}


def _convert(source: bytes, pil_format: str, quality: int) -> bytes:
    with Image.open(io.BytesIO(source)) as img:
        img.load()
        if pil_format == "JPEG" and img.mode not in ("RGB", "L"):
            img = img.convert("RGB")
        out = io.BytesIO()
        img.save(out, format=pil_format, quality=quality)
        return out.getvalue()


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def converted(storage: Storage, output: Output, fmt: str, quality: int) -> tuple[str, str, str]:
    """The storage key, content type and file name of the output in `fmt`, made if needed."""
    if output.content_type.split(";")[0] not in CONVERTIBLE:
        raise ValidationFailed(
            f"Only image outputs can be converted; this one is {output.content_type}.",
            errors=[{"field": "format", "message": "not an image output"}],
        )
    pil_format, content_type, ext = FORMATS[fmt]
    key = f"{output.storage_key}.q{quality}{ext}"
    filename = PurePosixPath(output.filename).stem + ext
    if not await storage.exists(key):
        try:
            source = b"".join([chunk async for chunk in storage.read_stream(output.storage_key)])
        except FileNotFoundError:
            raise NotFound("The output's file is no longer stored.") from None
        data = await anyio.to_thread.run_sync(_convert, source, pil_format, quality)
        await storage.write_stream(key, _one(data))
    return key, content_type, filename
