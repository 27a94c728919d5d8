"""What an input file really is, read from its bytes with Pillow (never from the client's word)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image

# The formats ComfyUI's LoadImage reads and browsers show; anything else is refused as an input.
ALLOWED_FORMATS = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/tiff": ".tiff",
}


class NotAnImage(ValueError):
    """The bytes are not an image this gateway accepts; the message is safe to show."""


@dataclass(frozen=True, slots=True)
class ImageInfo:
    content_type: str
    width: int
    height: int

    @property
    def extension(self) -> str:
        return EXTENSIONS[self.content_type]


def inspect_image(fh: BinaryIO, max_pixels: int, max_frames: int | None = None) -> ImageInfo:
    """Open the file as an image and check it; blocking (run it in a thread).

    Only the header is decoded for the dimensions, and `verify()` checks the structure without
    decoding the pixels, so a small file that would decode into gigabytes costs nothing here.
    ComfyUI's LoadImage decodes every frame of an animated image into one tensor, so the pixel
    bound is over all frames (frames x width x height), and the frames are bounded too.
    """
    fh.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fh) as img:
                fmt = img.format or ""
                width, height = img.size
                if fmt not in ALLOWED_FORMATS:
                    raise NotAnImage(
                        f"{fmt or 'this'} images are not accepted; send PNG, JPEG, WEBP, GIF, BMP or TIFF."
                    )
                if width * height > max_pixels:
                    raise NotAnImage(
                        f"The image has {width}x{height} pixels; at most {max_pixels} pixels are accepted."
                    )
                # Counting walks the frame headers (GIF, TIFF) or reads the count from the header
                # (APNG, WEBP); no frame is decoded.
                frames = getattr(img, "n_frames", 1)
                if max_frames is not None and frames > max_frames:
                    raise NotAnImage(
                        f"The image has {frames} frames; at most {max_frames} frames are accepted."
                    )
                if frames * width * height > max_pixels:
                    raise NotAnImage(
                        f"The image has {frames} frames of {width}x{height} pixels; at most {max_pixels} pixels "
                        "are accepted over all frames."
                    )
                img.verify()
    except NotAnImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise NotAnImage(f"The image has more than {max_pixels} pixels.") from None
    except Exception:  # noqa: BLE001 - Pillow raises many kinds for bad input; all mean the same
        raise NotAnImage("The file is not an image (or is damaged).") from None
    finally:
        fh.seek(0)
    return ImageInfo(ALLOWED_FORMATS[fmt], width, height)
