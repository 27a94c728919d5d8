"""The per-minute token bucket's arithmetic (the SQL that applies it: tests/integration/test_token_bucket_sql.py)."""

from __future__ import annotations

import pytest

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
