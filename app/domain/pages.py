"""One page of a list, newest first, as every list of the API is paged: `?limit=` and an opaque
`?cursor=` (the sort key of the last item sent, app/db/cursor.py). A cursor this API did not make
is a 422, hence here and not in app/db."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, and_, or_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.db.cursor import decode_cursor, encode_cursor
from app.domain.errors import ValidationFailed


def after_cursor(cursor: str | None) -> tuple[Any, str] | None:
    """The position a cursor names; a cursor this API did not make is a 422."""
    if not cursor:
        return None
    after = decode_cursor(cursor)
    if after is None:
        raise ValidationFailed(
            "The cursor is not valid.", errors=[{"field": "cursor", "message": "not a cursor from this API"}]
        )
    return after


async def newest_first(
    session: AsyncSession,
    stmt: Select[Any],
    *,
    at: InstrumentedAttribute[Any],
    key: InstrumentedAttribute[Any],
    limit: int,
    cursor: str | None,
) -> tuple[list[Any], str | None]:
    """The rows of `stmt` (a select of one model) ordered by (`at`, `key`) descending, after
    `cursor`; and the cursor of the next page, or None on the last one."""
    after = after_cursor(cursor)
    if after is not None:
        stamp, last_key = after
        stmt = stmt.where(or_(at < stamp, and_(at == stamp, key < last_key)))
    rows = list((await session.execute(stmt.order_by(at.desc(), key.desc()).limit(limit + 1))).scalars())
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(getattr(last, at.key), getattr(last, key.key))
