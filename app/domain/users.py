"""Users and their keys; authentication of a bearer key."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db.models import ApiKey, User
from app.domain.errors import Unauthorized
from app.domain.keys import generate_key, hash_key, key_hint, same_secret

# The row that owns what the bootstrap key (GATEWAY_ADMIN_API_KEY) does.
BOOTSTRAP_ADMIN_ID = "00000000-0000-0000-0000-000000000001"

LIMIT_NAMES = ("max_queued", "max_running", "rate_per_minute", "jobs_per_day", "max_priority", "allow_raw_workflows")


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    name: str
    is_admin: bool
    limits: dict[str, Any]
    # The bootstrap key is not limited (the contract says so).
    unlimited: bool = False
    key_id: str | None = None


def effective_limits(user: User, settings: Settings) -> dict[str, Any]:
    defaults = {name: getattr(settings, f"default_{name}") for name in LIMIT_NAMES}
    return {**defaults, **{k: v for k, v in (user.limits or {}).items() if k in LIMIT_NAMES and v is not None}}


async def ensure_bootstrap_admin(session: AsyncSession) -> None:
    if await session.get(User, BOOTSTRAP_ADMIN_ID) is None:
        session.add(User(id=BOOTSTRAP_ADMIN_ID, name="admin", is_admin=True, limits={}))
        await session.flush()


async def create_user(
    session: AsyncSession, *, name: str, is_admin: bool = False, limits: dict[str, Any] | None = None
) -> User:
    user = User(id=str(uuid.uuid4()), name=name, is_admin=is_admin, disabled=False, limits=limits or {})
    session.add(user)
    await session.flush()
    return user


async def create_key(session: AsyncSession, user: User, *, name: str | None = None) -> tuple[ApiKey, str]:
    """Returns the row and the secret; the secret is never stored and cannot be shown again."""
    secret = generate_key()
    row = ApiKey(id=str(uuid.uuid4()), user_id=user.id, name=name, key_hash=hash_key(secret), hint=key_hint(secret))
    session.add(row)
    await session.flush()
    return row, secret


async def authenticate(session: AsyncSession, key: str | None, settings: Settings) -> Principal:
    if not key:
        raise Unauthorized("Send an API key as 'Authorization: Bearer <key>'.")
    if settings.admin_api_key and same_secret(key, settings.admin_api_key):
        return Principal(BOOTSTRAP_ADMIN_ID, "admin", True, {}, unlimited=True)
    digest = hash_key(key)
    row = (
        await session.execute(
            select(ApiKey, User).join(User, User.id == ApiKey.user_id).where(ApiKey.key_hash == digest)
        )
    ).first()
    # The lookup is by hash; the constant-time comparison guards against any timing in the index.
    if row is None or not same_secret(row.ApiKey.key_hash, digest):
        raise Unauthorized("The API key is not valid.")
    api_key, user = row.ApiKey, row.User
    if api_key.revoked_at is not None:
        raise Unauthorized("The API key has been revoked.")
    if user.disabled:
        raise Unauthorized("The user of this API key is disabled.")
    return Principal(user.id, user.name, user.is_admin, effective_limits(user, settings), key_id=api_key.id)
