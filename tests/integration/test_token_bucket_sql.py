"""The SQL that applies the per-minute token bucket, on SQLite and PostgreSQL, checked against its
formula (tests/unit/gateway/test_token_bucket.py)."""

from __future__ import annotations

import asyncio

import pytest

from app.db import ratelimit as buckets
from app.db.engine import create_engine, create_sessionmaker
from app.db.models import User
from app.domain import ratelimit

T0 = 1_800_000_000.0


@pytest.fixture
async def session_maker(db_url: str):  # noqa: ANN201
    engine = create_engine(db_url)
    maker = create_sessionmaker(engine)
    async with maker() as session:
        session.add(User(id="u1", name="u1", is_admin=False, disabled=False, limits={}))
        await session.commit()
    yield maker
    await engine.dispose()


async def _take(maker, now: float, rate: int = 6) -> float | None:  # noqa: ANN001
    async with maker() as session:
        left = await buckets.take(session, "u1", rate_per_minute=rate, now=now)
        await session.commit()
        return left


async def test_sql_bucket_starts_full_empties_and_refills_like_the_formula(session_maker) -> None:  # noqa: ANN001
    # 6 a minute: a burst of 6, then one token every 10 s.
    lefts = [await _take(session_maker, T0) for _ in range(6)]
    assert lefts == pytest.approx([5, 4, 3, 2, 1, 0])
    assert await _take(session_maker, T0 + 9.9) is None  # 0.99 of a token: not enough
    async with session_maker() as session:
        tokens, refilled_at = await buckets.state(session, "u1")
    # A refused take changes nothing in the row.
    assert (tokens, refilled_at) == (pytest.approx(0.0), T0)
    assert await _take(session_maker, T0 + 10) == pytest.approx(0.0)
    assert await _take(session_maker, T0 + 25) == pytest.approx(0.5)
    # An hour later the bucket is full again, never fuller.
    assert await _take(session_maker, T0 + 3600) == pytest.approx(5.0)
    # A replica with a clock 100 s behind neither refills nor breaks the bucket.
    assert await _take(session_maker, T0 + 3500) == pytest.approx(4.0)


async def test_spend_reports_retry_after_from_the_stored_level(session_maker) -> None:  # noqa: ANN001
    async with session_maker() as session:
        for _ in range(6):
            assert (await ratelimit.spend(session, "u1", 6, now=T0)).allowed
        refused = await ratelimit.spend(session, "u1", 6, now=T0 + 4)
        await session.commit()
    assert not refused.allowed and refused.reset == 6  # 0.4 of a token there, 0.6 to come at 0.1/s


async def test_concurrent_takes_never_overdraw_the_bucket(session_maker) -> None:  # noqa: ANN001
    # 40 requests at the same instant against a bucket of 10: exactly 10 pass, on either database.
    results = await asyncio.gather(*(_take(session_maker, T0, rate=10) for _ in range(40)))
    assert sum(r is not None for r in results) == 10
    assert sorted(r for r in results if r is not None) == pytest.approx(list(range(10)))
