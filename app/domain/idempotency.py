"""`Idempotency-Key` on POST /v1/generate: a retried submit returns the job the first one made.

Per user, for `idempotency_ttl_seconds` (24 h): the same key and the same body answer the
original job; the same key with another body is a 422; a key whose first request is still being
processed is a 409. The row is inserted before anything else (so of two concurrent requests only
one goes ahead, on any replica) and points at its job from the transaction that stores the job.
A row left without a job by a process that died is taken over after `STALE_SECONDS`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db import idempotency as repo
from app.db.types import utcnow
from app.domain.errors import Conflict, ValidationFailed

#: Visible ASCII, as the IETF draft's examples (UUIDs, random tokens) and HTTP field values allow.
KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,255}")
#: A request that holds a key without a job for this long is taken to have died.
STALE_SECONDS = 120


@dataclass(frozen=True, slots=True)
class Claim:
    """The key is ours (`row_id`), or it answers with an earlier job (`replay_job_id`)."""

    row_id: str | None = None
    replay_job_id: str | None = None


def check_key(key: str) -> str:
    if not KEY_PATTERN.fullmatch(key):
        raise ValidationFailed(
            "Idempotency-Key must be 1 to 255 visible ASCII characters (no spaces).",
            errors=[{"field": "Idempotency-Key", "message": "1-255 visible ASCII characters"}],
        )
    return key


def request_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


async def claim(session: AsyncSession, user_id: str, key: str, body_hash: str, settings: Settings) -> Claim:
    """Commits (the key's row is taken in a transaction of its own)."""
    now = utcnow()
    await repo.prune(session, now - timedelta(seconds=settings.idempotency_ttl_seconds))
    await session.commit()
    row = await repo.take(session, user_id, key, body_hash)
    if row is not None:
        return Claim(row_id=row.id)
    existing = await repo.get(session, user_id, key)
    if existing is None:  # pruned or released in between: try once more
        row = await repo.take(session, user_id, key, body_hash)
        if row is not None:
            return Claim(row_id=row.id)
        existing = await repo.get(session, user_id, key)
        if existing is None:
            raise Conflict("This Idempotency-Key is being used by another request; retry.")
    if existing.request_hash != body_hash:
        raise ValidationFailed(
            "This Idempotency-Key was used with a different request body.",
            errors=[{"field": "Idempotency-Key", "message": "already used with another body"}],
        )
    if existing.job_id is not None:
        return Claim(replay_job_id=existing.job_id)
    if await repo.take_over(
        session, existing.id, body_hash, stale_before=now - timedelta(seconds=STALE_SECONDS)
    ):
        await session.commit()
        return Claim(row_id=existing.id)
    await session.rollback()
    raise Conflict("A request with this Idempotency-Key is still being processed; retry later.")


async def attach(session: AsyncSession, claim_: Claim, job_id: str) -> None:
    """In the job's transaction."""
    if claim_.row_id is not None:
        await repo.attach(session, claim_.row_id, job_id)


async def release(session: AsyncSession, claim_: Claim) -> None:
    if claim_.row_id is not None:
        await repo.release(session, claim_.row_id)
