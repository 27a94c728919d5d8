"""Binary WebSocket frames, laid out as ComfyUI's server.py encodes them.

Every binary frame starts with a 4-byte big-endian event type:
- 1 PREVIEW_IMAGE: 4-byte image type (1 JPEG, 2 PNG), then the image;
- 3 TEXT: 4-byte length of the node id, the node id, then UTF-8 text;
- 4 PREVIEW_IMAGE_WITH_METADATA: 4-byte metadata length, JSON metadata, then the image.
"""

from __future__ import annotations

import io
import json
import struct
from typing import Any

from PIL import Image

PREVIEW_IMAGE = 1
TEXT = 3
PREVIEW_IMAGE_WITH_METADATA = 4

#: ComfyUI's MAX_PREVIEW_RESOLUTION.
MAX_PREVIEW_RESOLUTION = 512

_IMAGE_TYPES = {"JPEG": (1, "image/jpeg"), "PNG": (2, "image/png")}


def encode_image(image: Image.Image, fmt: str = "JPEG", max_size: int = MAX_PREVIEW_RESOLUTION) -> bytes:
    """An image as ComfyUI sends previews: fit into max_size, JPEG quality 95 (or PNG)."""
    if image.width > max_size or image.height > max_size:
        image = image.copy()
        image.thumbnail((max_size, max_size))
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    if fmt == "PNG":
        image.save(buf, format="PNG", compress_level=1)
    else:
        image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def preview_frame(data: bytes, fmt: str = "JPEG") -> bytes:
    return struct.pack(">II", PREVIEW_IMAGE, _IMAGE_TYPES[fmt][0]) + data


def preview_with_metadata_frame(data: bytes, metadata: dict[str, Any], fmt: str = "JPEG") -> bytes:
    meta = {**metadata, "image_type": _IMAGE_TYPES[fmt][1]}
    meta_bytes = json.dumps(meta).encode("utf-8")
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta_bytes)) + meta_bytes + data


def text_frame(node_id: str, text: str) -> bytes:
    node = node_id.encode("utf-8")
    return struct.pack(">II", TEXT, len(node)) + node + text.encode("utf-8")


def decode_frame(frame: bytes) -> dict[str, Any]:
    """The header of a binary frame, decoded like the recordings' `decoded` field (for tests and
    debugging)."""
    (event,) = struct.unpack(">I", frame[:4])
    if event == PREVIEW_IMAGE:
        (itype,) = struct.unpack(">I", frame[4:8])
        return {
            "event_type": 1,
            "event_name": "PREVIEW_IMAGE",
            "image_type": {1: "JPEG", 2: "PNG"}.get(itype, str(itype)),
            "image_bytes": len(frame) - 8,
            "image_magic_hex": frame[8:12].hex(),
        }
    if event == TEXT:
        (n,) = struct.unpack(">I", frame[4:8])
        return {
            "event_type": 3,
            "event_name": "TEXT",
            "node_id": frame[8 : 8 + n].decode("utf-8"),
            "text": frame[8 + n :].decode("utf-8"),
        }
    if event == PREVIEW_IMAGE_WITH_METADATA:
        (n,) = struct.unpack(">I", frame[4:8])
        return {
            "event_type": 4,
            "event_name": "PREVIEW_IMAGE_WITH_METADATA",
            "metadata_length": n,
            "metadata": json.loads(frame[8 : 8 + n]),
            "image_bytes": len(frame) - 8 - n,
            "image_magic_hex": frame[8 + n : 12 + n].hex(),
        }
    return {"event_type": event, "event_name": "UNKNOWN", "length": len(frame)}
