"""Opaque list cursors: the (created_at, id) of the last item of a page, newest-first order."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime


def encode_cursor(created_at: datetime, key: str) -> str:
    raw = f"{created_at.isoformat()}|{key}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str] | None:
    """None when the cursor was not made by `encode_cursor`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8")
        created, key = raw.split("|", 1)
        created_at = datetime.fromisoformat(created)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if created_at.tzinfo is None or "\x00" in key:
        return None
    try:
        # Compared in UTC: an offset can push a stamp past datetime's range (0001-01-01T00:00+01:00).
        return created_at.astimezone(UTC), key
    except OverflowError:
        return None
