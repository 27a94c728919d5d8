"""The per-user request rate: a token bucket, and the RateLimit header fields that describe it.

Every authenticated request of a limited user takes one token, whatever the route: reading a job
costs the gateway a database round trip just as submitting one does, and a client polling in a
tight loop is what the limit is for. (Requests that fail authentication, and output downloads by
signed URL, carry no user and spend nothing; nor does a POST /v1/generate whose body is not even
well-formed JSON of the right shape, refused before the route runs.) POST /v1/generate spends its
token in the transaction that stores the job (app/api/generate.py); every other route spends it in
its own short transaction before the route runs (app/api/deps.py). The bucket holds
`rate_per_minute` tokens (the burst) and refills continuously at `rate_per_minute` tokens a minute.
The bootstrap admin key is not limited.

The header fields follow draft-ietf-httpapi-ratelimit-headers-11 (structured fields):
`RateLimit-Policy: "per-minute";q=120;w=60` and `RateLimit: "per-minute";r=37;t=1`, where `r` is
the whole tokens left and `t` the seconds until the next token arrives (within which no more than
`r` requests can succeed). A refused request gets `Retry-After` equal to `t`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import ratelimit as buckets
from app.domain.errors import LimitExceeded

POLICY = "per-minute"
WINDOW_SECONDS = 60
# Float arithmetic in two databases: a bucket within this of a whole token counts as having it.
_EPSILON = 1e-9


def available(tokens: float, refilled_at: float, now: float, rate_per_minute: int) -> float:
    """Tokens in a bucket at `now`: refilled for the time since `refilled_at`, never above the burst.

    The same formula as the SQL in app/db/ratelimit.py; time never runs backwards for a bucket.
    """
    return min(
        float(rate_per_minute), tokens + max(0.0, now - refilled_at) * rate_per_minute / WINDOW_SECONDS
    )


def seconds_until(tokens: float, wanted: float, rate_per_minute: int) -> int:
    """Whole seconds (at least 1) until a bucket holding `tokens` holds `wanted`."""
    missing = wanted - tokens
    if missing <= _EPSILON:
        return 1
    return max(1, math.ceil(missing * WINDOW_SECONDS / rate_per_minute - _EPSILON))


def whole(tokens: float) -> int:
    return max(0, math.floor(tokens + _EPSILON))


def policy_field(name: str, quota: int, window: int | None = None) -> str:
    return f'"{name}";q={quota}' + (f";w={window}" if window else "")


def limit_field(name: str, remaining: int, reset: int | None = None) -> str:
    return f'"{name}";r={remaining}' + (f";t={reset}" if reset is not None else "")


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    rate_per_minute: int
    # Whole tokens left (after this request's, when allowed).
    remaining: int
    # Seconds until the next token: when refused, when to retry.
    reset: int

    @property
    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Policy": policy_field(POLICY, self.rate_per_minute, WINDOW_SECONDS),
            "RateLimit": limit_field(POLICY, self.remaining, self.reset),
        }

    def error(self) -> LimitExceeded:
        return LimitExceeded(
            f"More than {self.rate_per_minute} requests a minute; retry in {self.reset} s.",
            headers={"Retry-After": str(self.reset), **self.headers},
            limit="rate_per_minute",
        )


def decide(tokens_left: float | None, level_now: float, rate_per_minute: int) -> RateDecision:
    """The outcome of one take: `tokens_left` from the bucket (None if refused), `level_now` the
    bucket's level when refused."""
    if tokens_left is not None:
        return RateDecision(
            True,
            rate_per_minute,
            whole(tokens_left),
            seconds_until(tokens_left, whole(tokens_left) + 1, rate_per_minute),
        )
    return RateDecision(False, rate_per_minute, 0, seconds_until(level_now, 1.0, rate_per_minute))


async def spend(
    session: AsyncSession, user_id: str, rate_per_minute: int, *, now: float | None = None
) -> RateDecision:
    """Take a token for one request. The caller commits (at once: the bucket row stays locked until then)."""
    now = time.time() if now is None else now
    left = await buckets.take(session, user_id, rate_per_minute=rate_per_minute, now=now)
    if left is not None:
        return decide(left, left, rate_per_minute)
    stored = await buckets.state(session, user_id)
    level = available(*stored, now, rate_per_minute) if stored else float(rate_per_minute)
    return decide(None, level, rate_per_minute)


async def level(
    session: AsyncSession, user_id: str, rate_per_minute: int, *, now: float | None = None
) -> int:
    """Whole tokens in the user's bucket now, without taking one."""
    now = time.time() if now is None else now
    stored = await buckets.state(session, user_id)
    return whole(available(*stored, now, rate_per_minute) if stored else float(rate_per_minute))
