"""One page of a list, newest first, as every list of the API is paged: `?limit=` and an opaque
`?cursor=`, the sort key (a timestamp and a unique key) of the last item sent.

The one definition of paging; app/domain/pages.py turns a cursor the API did not make into a 422."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, and_, or_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

#: Where a page starts: the (timestamp, key) of the last item of the page before.
After = tuple[datetime, str]


def encode_cursor(created_at: datetime, key: str) -> str:
    raw = f"{created_at.isoformat()}|{key}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> After | None:
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


async def newest_first(
    session: AsyncSession,
    stmt: Select[Any],
    *,
    at: InstrumentedAttribute[Any],
    key: InstrumentedAttribute[Any],
    limit: int,
    after: After | None,
) -> tuple[list[Any], str | None]:
    """The rows of `stmt` (a select of one model) ordered by (`at`, `key`) descending, after
    `after`; and the cursor of the next page, or None on the last one."""
    if after is not None:
        stamp, last_key = after
        stmt = stmt.where(or_(at < stamp, and_(at == stamp, key < last_key)))
    rows = list((await session.execute(stmt.order_by(at.desc(), key.desc()).limit(limit + 1))).scalars())
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(getattr(last, at.key), getattr(last, key.key))
