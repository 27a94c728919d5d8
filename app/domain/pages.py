"""The `?cursor=` of a list request: a cursor this API did not make is a 422, hence here and not in
app/db/pages.py (where pages are read)."""

from __future__ import annotations

from app.db.pages import After, decode_cursor
from app.domain.errors import ValidationFailed


def after_cursor(cursor: str | None) -> After | None:
    """The position a cursor names; a cursor this API did not make is a 422."""
    if not cursor:
        return None
    after = decode_cursor(cursor)
    if after is None:
        raise ValidationFailed(
            "The cursor is not valid.", errors=[{"field": "cursor", "message": "not a cursor from this API"}]
        )
    return after
