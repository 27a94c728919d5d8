"""Image outputs converted on request (`?format=webp|jpeg&quality=`), kept in storage once made.

`quality` snaps to one of GATEWAY_CONVERSION_QUALITIES, so an output has at most a handful of
copies whoever holds its signed URL; an image too large to decode (GATEWAY_MAX_IMAGE_PIXELS) or
damaged is a 422, never a 500.

The converted file lives next to the original, under the job's prefix, so deleting a job's
files (DELETE /v1/jobs/{id}, retention) removes its conversions too. Pillow runs in a worker
thread: a conversion never blocks the event loop.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import AsyncIterator
from pathlib import PurePosixPath

import anyio
from PIL import Image

from app.config import Settings
from app.db.models import Output
from app.domain.errors import NotFound, ValidationFailed
from app.storage.base import Storage

FORMATS = {"webp": ("WEBP", "image/webp", ".webp"), "jpeg": ("JPEG", "image/jpeg", ".jpg")}
# Raster formats Pillow reads that ComfyUI's image nodes write.
CONVERTIBLE = {"image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "image/tiff"}


class NotConvertible(ValueError):
    """The output cannot be converted; the message is safe to show."""


def _convert(source: bytes, pil_format: str, quality: int, max_pixels: int) -> bytes:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source)) as img:
                # Checked on the header, before a single pixel is decoded: a small file can claim
                # gigabytes of pixels (a raw workflow's custom node may write anything).
                width, height = img.size
                if width * height > max_pixels:
                    raise NotConvertible(
                        f"The image has {width}x{height} pixels; at most {max_pixels} are converted."
                    )
                return _encode(img, pil_format, quality)
    except NotConvertible:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise NotConvertible(f"The image has more than {max_pixels} pixels.") from None
    except Exception:  # noqa: BLE001 - Pillow raises many kinds for a damaged file; all mean the same
        raise NotConvertible("The output is not an image Pillow can read (or it is damaged).") from None


def _encode(img: Image.Image, pil_format: str, quality: int) -> bytes:
    img.load()
    if pil_format == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    out = io.BytesIO()
    img.save(out, format=pil_format, quality=quality)
    return out.getvalue()


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def snap_quality(quality: int, levels: list[int]) -> int:
    """The level nearest `quality` (the higher one on a tie): copies per output stay few."""
    return min(levels, key=lambda level: (abs(level - quality), -level))


async def converted(
    storage: Storage, output: Output, fmt: str, quality: int, settings: Settings
) -> tuple[str, str, str, int]:
    """The storage key, content type, file name and quality level of the output in `fmt`, made if needed."""
    if output.content_type.split(";")[0] not in CONVERTIBLE:
        raise ValidationFailed(
            f"Only image outputs can be converted; this one is {output.content_type}.",
            errors=[{"field": "format", "message": "not an image output"}],
        )
    pil_format, content_type, ext = FORMATS[fmt]
    quality = snap_quality(quality, settings.conversion_qualities)
    key = f"{output.storage_key}.q{quality}{ext}"
    filename = PurePosixPath(output.filename).stem + ext
    if not await storage.exists(key):
        try:
            source = b"".join([chunk async for chunk in storage.read_stream(output.storage_key)])
        except FileNotFoundError:
            raise NotFound("The output's file is no longer stored.") from None
        try:
            data = await anyio.to_thread.run_sync(
                _convert, source, pil_format, quality, settings.max_image_pixels
            )
        except NotConvertible as exc:
            raise ValidationFailed(str(exc), errors=[{"field": "format", "message": str(exc)}]) from None
        await storage.write_stream(key, _one(data))
    return key, content_type, filename, quality
