"""Users and their keys; authentication of a bearer key; what admins do with them.

Authentication reads the key and its user from the database, or from the process's cache of valid
keys (app/domain/read_cache.py): a revoked key or a disabled user is refused from the very next
request on the replica that made the change, and on the others once its announcement arrives
(at most the cache's time to live if it does not).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db import changes
from app.db import ratelimit as buckets
from app.db import users as repo
from app.db.models import ApiKey, User
from app.db.types import utcnow
from app.domain import limits as limits_
from app.domain.errors import Conflict, NotFound, Unauthorized
from app.domain.keys import generate_key, hash_key, key_hint, same_secret
from app.domain.limits import LIMIT_NAMES
from app.domain.pages import after_cursor
from app.domain.read_cache import ReadCache
from app.domain.views import rfc3339

# The row that owns what the bootstrap key (GATEWAY_ADMIN_API_KEY) does.
BOOTSTRAP_ADMIN_ID = "00000000-0000-0000-0000-000000000001"

__all__ = ["BOOTSTRAP_ADMIN_ID", "LIMIT_NAMES", "Principal", "authenticate", "effective_limits"]


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
    """Every limit of a user: its own values, else the deployment's defaults (see app/domain/limits.py)."""
    return limits_.effective(user.limits, settings)


async def ensure_bootstrap_admin(session: AsyncSession) -> None:
    if await repo.get(session, BOOTSTRAP_ADMIN_ID) is None:
        await repo.add(session, User(id=BOOTSTRAP_ADMIN_ID, name="admin", is_admin=True, limits={}))


async def create_user(
    session: AsyncSession, *, name: str, is_admin: bool = False, limits: dict[str, Any] | None = None
) -> User:
    own = {k: v for k, v in (limits or {}).items() if v is not None}
    user = User(id=str(uuid.uuid4()), name=name, is_admin=is_admin, disabled=False, limits=own)
    await repo.add(session, user)
    return user


async def create_key(session: AsyncSession, user: User, *, name: str | None = None) -> tuple[ApiKey, str]:
    """Returns the row and the secret; the secret is never stored and cannot be shown again."""
    secret = generate_key()
    row = ApiKey(
        id=str(uuid.uuid4()), user_id=user.id, name=name, key_hash=hash_key(secret), hint=key_hint(secret)
    )
    await repo.add(session, row)
    return row, secret


async def authenticate(
    session: AsyncSession, key: str | None, settings: Settings, cache: ReadCache[Principal] | None = None
) -> Principal:
    """The caller of a key; Unauthorized if none. With `cache`, a valid key's caller is kept there."""
    if not key:
        raise Unauthorized("Send an API key as 'Authorization: Bearer <key>'.")
    if settings.admin_api_key and same_secret(key, settings.admin_api_key):
        return Principal(BOOTSTRAP_ADMIN_ID, "admin", True, {}, unlimited=True)
    digest = hash_key(key)
    if cache is None:
        return await _read_principal(session, digest, settings)
    # Found by the digest of the key itself: a hit is the key, as the stored hash's comparison says.
    cached = cache.get(digest)
    if cached is not None:
        return cached
    generation = cache.generation
    principal = await _read_principal(session, digest, settings)
    cache.put(digest, principal, generation)
    return principal


async def _read_principal(session: AsyncSession, digest: str, settings: Settings) -> Principal:
    found = await repo.key_and_user(session, digest)
    # The lookup is by hash; the constant-time comparison guards against any timing in the index.
    if found is None or not same_secret(found[0].key_hash, digest):
        raise Unauthorized("The API key is not valid.")
    api_key, user = found
    if api_key.revoked_at is not None:
        raise Unauthorized("The API key has been revoked.")
    if user.disabled:
        raise Unauthorized("The user of this API key is disabled.")
    return Principal(user.id, user.name, user.is_admin, effective_limits(user, settings), key_id=api_key.id)


# ---- admin -------------------------------------------------------------------------------------


def user_view(user: User, settings: Settings) -> dict[str, Any]:
    return {
        "id": user.id,
        "name": user.name,
        "is_admin": user.is_admin,
        "disabled": user.disabled,
        "limits": effective_limits(user, settings),
        "limit_overrides": {
            k: v for k, v in (user.limits or {}).items() if k in LIMIT_NAMES and v is not None
        },
        "created_at": rfc3339(user.created_at),
    }


def key_view(key: ApiKey) -> dict[str, Any]:
    """A key as listed: never its secret, nor its hash."""
    return {
        "id": key.id,
        "name": key.name,
        "hint": key.hint,
        "created_at": rfc3339(key.created_at),
        "revoked_at": rfc3339(key.revoked_at),
    }


async def get_user(session: AsyncSession, user_id: str) -> User:
    user = await repo.get(session, user_id)
    if user is None:
        raise NotFound(f"There is no user {user_id!r}.")
    return user


async def list_users(
    session: AsyncSession, *, limit: int, cursor: str | None
) -> tuple[list[User], str | None]:
    return await repo.page(session, limit=limit, after=after_cursor(cursor))


async def update_user(
    session: AsyncSession,
    user_id: str,
    *,
    name: str | None = None,
    disabled: bool | None = None,
    limit_changes: dict[str, Any] | None = None,
) -> User:
    """Change a user; `limit_changes` merge into its own limits (a null member goes back to the default).
    Takes effect from the user's next request once committed: the caller forgets its cached
    callers after the commit (`ReadCache.forget_all`); other replicas hear of it."""
    user = await get_user(session, user_id)
    if disabled and user.id == BOOTSTRAP_ADMIN_ID:
        raise Conflict("The bootstrap admin user cannot be disabled.")
    if name is not None:
        user.name = name
    if disabled is not None:
        user.disabled = disabled
    if limit_changes:
        # A new dict: the JSON column does not track changes made inside the old one.
        user.limits = limits_.merged(user.limits, limit_changes)
        if "rate_per_minute" in limit_changes:
            # A new rate starts with a full bucket of its own size: a user an admin gives more
            # room is not kept waiting for the old, empty bucket to refill.
            await buckets.reset(session, user.id)
    user.updated_at = utcnow()
    await session.flush()
    await changes.announce(session)
    return user


async def list_keys(
    session: AsyncSession, user_id: str, *, limit: int, cursor: str | None
) -> tuple[list[ApiKey], str | None]:
    await get_user(session, user_id)
    return await repo.keys_page(session, user_id, limit=limit, after=after_cursor(cursor))


async def revoke_key(session: AsyncSession, user_id: str, key_id: str) -> ApiKey:
    """Revoke a key of the user (again: nothing changes). Refused from the key's next request once
    committed (see `update_user` for the cached callers)."""
    await get_user(session, user_id)
    key = await repo.get_key(session, user_id, key_id)
    if key is None:
        raise NotFound(f"User {user_id!r} has no key {key_id!r}.")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        await session.flush()
        await changes.announce(session)
    return key
