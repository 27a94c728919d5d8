"""Job quotas checked on submit: `max_queued` (jobs waiting at once) and `jobs_per_day` (jobs created in
any rolling 24 hours). Over one: 429 with `Retry-After`, the RateLimit header fields of that quota,
and a problem whose `limit` names it; nothing is created.

`Retry-After` says when the request can succeed:
- jobs_per_day: exact, the moment enough of the window's oldest jobs turn 24 hours old;
- max_queued: an estimate of when one of the user's queued jobs starts (leaves the queue), from
  how often the user's jobs started in the last 10 minutes, else from how long its recent jobs ran,
  else 10 seconds; at most an hour.
If both are over, the later of the two is the answer (the request cannot succeed before it).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import usage
from app.db.types import utcnow
from app.domain.errors import LimitExceeded
from app.domain.ratelimit import limit_field, policy_field
from app.domain.users import Principal

DAY = timedelta(hours=24)
_START_WINDOW = timedelta(minutes=10)
_FALLBACK_SECONDS = 10
_MAX_ESTIMATE_SECONDS = 3600


def _ceil_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds - 1e-6))


async def _queued_slot_eta(session: AsyncSession, user_id: str, now: datetime) -> int:
    started, first = await usage.starts_since(session, user_id, now - _START_WINDOW)
    if started and first is not None:
        estimate = max((now - first).total_seconds(), 1.0) / started
    else:
        runs = await usage.recent_run_seconds(session, user_id)
        estimate = sum(runs) / len(runs) if runs else _FALLBACK_SECONDS
    return min(_MAX_ESTIMATE_SECONDS, _ceil_seconds(estimate))


def _error(limit: str, policy: str, quota: int, window: int | None, retry: int, detail: str) -> LimitExceeded:
    return LimitExceeded(
        detail,
        headers={
            "Retry-After": str(retry),
            "RateLimit-Policy": policy_field(policy, quota, window),
            "RateLimit": limit_field(policy, 0, retry),
        },
        limit=limit,
    )


async def check_job_quotas(
    session: AsyncSession, principal: Principal, *, now: datetime | None = None
) -> None:
    """Raise LimitExceeded when one more job would exceed a quota.

    Call in the transaction that inserts the job, after that transaction spent the request's token:
    the token's UPDATE holds the user's bucket row until the commit, so two submits of one user (on
    any replica) cannot both count 99 and both insert the 100th. On SQLite, which serves one
    process, that transaction holds the database's write lock.
    """
    if principal.unlimited:
        return
    now = now or utcnow()
    over: list[LimitExceeded] = []
    retries: list[int] = []

    since = now - DAY
    queued, today = await usage.quota_counts(session, principal.user_id, since)

    max_queued = int(principal.limits["max_queued"])
    if queued >= max_queued:
        retry = await _queued_slot_eta(session, principal.user_id, now)
        over.append(
            _error(
                "max_queued",
                "queued",
                max_queued,
                None,
                retry,
                f"You have {queued} jobs queued, the most you may have (max_queued={max_queued}).",
            )
        )
        retries.append(retry)

    per_day = int(principal.limits["jobs_per_day"])
    if today >= per_day:
        # One more job fits once the (today - per_day + 1) oldest jobs of the window are 24 h old.
        oldest = await usage.nth_created_since(session, principal.user_id, since, today - per_day)
        retry = _ceil_seconds(((oldest or now) + DAY - now).total_seconds())
        over.append(
            _error(
                "jobs_per_day",
                "per-day",
                per_day,
                int(DAY.total_seconds()),
                retry,
                f"You created {today} jobs in the last 24 hours, the most you may (jobs_per_day={per_day}).",
            )
        )
        retries.append(retry)

    if over:
        raise over[retries.index(max(retries))]


async def status_counts(session: AsyncSession, user_id: str) -> dict[str, int]:
    """The user's jobs queued and running now (GET /v1/me's usage)."""
    return await usage.status_counts(session, user_id)


async def created_since(session: AsyncSession, user_id: str, since: datetime) -> int:
    """How many jobs the user created since `since`."""
    return await usage.created_since(session, user_id, since)
