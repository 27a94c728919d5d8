"""The per-minute token bucket: its arithmetic, and the SQL that applies it on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from app.db import ratelimit as buckets
from app.db.engine import create_engine, create_sessionmaker
from app.db.models import User
from app.domain import ratelimit
from app.domain.ratelimit import available, decide, seconds_until

T0 = 1_800_000_000.0


def test_refill_is_linear_and_capped_at_the_burst() -> None:
    # 120 a minute: two tokens a second, never more than 120 in the bucket.
    assert available(0.0, T0, T0, 120) == 0.0
    assert available(0.0, T0, T0 + 0.5, 120) == pytest.approx(1.0)
    assert available(10.0, T0, T0 + 3, 120) == pytest.approx(16.0)
    assert available(119.0, T0, T0 + 3600, 120) == 120.0
    # A lowered rate caps a fuller bucket at the new burst at once.
    assert available(120.0, T0, T0, 30) == 30.0


def test_time_never_runs_backwards_for_a_bucket() -> None:
    # A replica whose clock is behind refills nothing (and takes nothing away).
    assert available(5.0, T0, T0 - 10, 60) == 5.0


def test_seconds_until_a_token_are_whole_and_at_least_one() -> None:
    assert seconds_until(0.0, 1.0, 60) == 1  # one a second
    assert seconds_until(0.0, 1.0, 6) == 10  # one per 10 s
    assert seconds_until(0.95, 1.0, 6) == 1  # 0.5 s, rounded up
    assert seconds_until(0.5, 1.0, 6) == 5
    assert seconds_until(1.0, 1.0, 6) == 1  # never 0: a Retry-After of 0 would invite a busy loop
    assert seconds_until(0.0, 1.0, 1_000_000) == 1


def test_decisions_and_their_header_fields() -> None:
    ok = decide(29.0, 29.0, 30)
    assert ok.allowed and ok.remaining == 29 and ok.reset == 2
    assert ok.headers == {"RateLimit-Policy": '"per-minute";q=30;w=60', "RateLimit": '"per-minute";r=29;t=2'}
    refused = decide(None, 0.25, 30)
    assert not refused.allowed and refused.remaining == 0 and refused.reset == 2  # 0.75 token at 0.5/s
    err = refused.error()
    assert err.status == 429 and err.extensions["limit"] == "rate_per_minute"
    # Retry-After and the effective window `t` name the same moment (the draft asks for that).
    assert err.headers["Retry-After"] == "2" and err.headers["RateLimit"] == '"per-minute";r=0;t=2'


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
