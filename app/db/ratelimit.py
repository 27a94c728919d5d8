"""Token buckets in the database, so that every replica spends from the same bucket.

Taking a token is one conditional UPDATE that refills the bucket for the time since its last
refill and takes one token, only if one is there; the row lock of that UPDATE makes concurrent
takes (from any replica) queue, so a bucket can never be overdrawn. The same arithmetic is in
app/domain/ratelimit.py (`available`), which the unit tests check against this SQL.

Time is Unix seconds from the caller's clock. Replicas' clocks should agree (NTP); a bucket never
moves back in time, so a replica whose clock is behind refills nothing until it catches up.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import BindParameter, Double, Table, bindparam, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from app.db.models import RateBucket


class _least(FunctionElement[float]):
    type = Double()
    inherit_cache = True


class _greatest(FunctionElement[float]):
    type = Double()
    inherit_cache = True


# SQLite's min()/max() with two or more arguments are the scalar functions PostgreSQL calls least()/greatest().
@compiles(_least)
def _least_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    return f"min({compiler.process(element.clauses, **kw)})"


@compiles(_greatest)
def _greatest_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    return f"max({compiler.process(element.clauses, **kw)})"


@compiles(_least, "postgresql")
def _least_pg(element: Any, compiler: Any, **kw: Any) -> str:
    return f"least({compiler.process(element.clauses, **kw)})"


@compiles(_greatest, "postgresql")
def _greatest_pg(element: Any, compiler: Any, **kw: Any) -> str:
    return f"greatest({compiler.process(element.clauses, **kw)})"


# The table, not the mapped class: a Core UPDATE skips the ORM's bulk-update machinery, which cost
# more CPU than the rest of a token's take.
_buckets = cast(Table, RateBucket.__table__)


def _available(now: Any, per_second: Any, capacity: Any) -> Any:
    """min(capacity, tokens + max(0, now - refilled_at) * per_second), in SQL over the row's old values."""
    elapsed = _greatest(now - _buckets.c.refilled_at, 0.0)
    return _least(_buckets.c.tokens + elapsed * per_second, capacity)


_now: BindParameter[float] = bindparam("now", type_=Double())
_per_second: BindParameter[float] = bindparam("per_second", type_=Double())
_capacity: BindParameter[float] = bindparam("capacity", type_=Double())
_user: BindParameter[str] = bindparam("bucket_user")
_available_now = _available(_now, _per_second, _capacity)
# Built once: a submit takes a token, and building the statement cost more than running it.
_TAKE = (
    update(_buckets)
    .where(_buckets.c.user_id == _user, _available_now >= 1.0)
    .values(tokens=_available_now - 1.0, refilled_at=_greatest(_buckets.c.refilled_at, _now))
    .returning(_buckets.c.tokens)
)
_CREATE = {
    name: insert(_buckets)
    .values(user_id=_user, tokens=_capacity, refilled_at=_now)
    .on_conflict_do_nothing(index_elements=["user_id"])
    for name, insert in (("postgresql", pg_insert), ("sqlite", sqlite_insert))
}


async def take(session: AsyncSession, user_id: str, *, rate_per_minute: int, now: float) -> float | None:
    """Take one token from the user's bucket. Returns the tokens left, or None when the bucket is empty.

    The first request of a user creates its bucket, full.
    """
    params = {
        "bucket_user": user_id,
        "now": float(now),
        "per_second": rate_per_minute / 60.0,
        "capacity": float(rate_per_minute),
    }
    left = (await session.execute(_TAKE, params)).scalar_one_or_none()
    if left is not None:
        return float(left)
    # No row taken: either the bucket is empty or the user has none yet. Create it (full) if missing
    # (another request may do so at the same moment: nothing happens then), and try once more.
    await session.execute(_CREATE[session.get_bind().dialect.name], params)
    left = (await session.execute(_TAKE, params)).scalar_one_or_none()
    return None if left is None else float(left)


async def state(session: AsyncSession, user_id: str) -> tuple[float, float] | None:
    """(tokens, refilled_at) as stored, or None when the user has no bucket yet (it is full)."""
    row = (
        await session.execute(
            select(RateBucket.tokens, RateBucket.refilled_at).where(RateBucket.user_id == user_id)
        )
    ).first()
    return None if row is None else (float(row[0]), float(row[1]))


async def reset(session: AsyncSession, user_id: str) -> None:
    """Forget the user's bucket: its next request starts with a full one."""
    await session.execute(delete(RateBucket).where(RateBucket.user_id == user_id))
