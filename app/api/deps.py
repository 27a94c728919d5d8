"""Request-scoped dependencies: the session, the caller, the gateway's typed state (app/api/state.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.requests import HTTPConnection
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.ratelimit import set_ratelimit_headers
from app.api.state import GatewayState
from app.config import Settings
from app.domain import ratelimit
from app.domain.errors import Forbidden
from app.domain.events.bus import EventBus
from app.domain.users import Principal, authenticate
from app.domain.webhook_secrets import SecretBox
from app.net.ssrf import OutboundGuard
from app.storage.base import Storage
from app.storage.signing import UrlSigner


def state(conn: HTTPConnection) -> GatewayState:
    """The running gateway's state (set by the lifespan, app/main.py), from a request or a socket."""
    return conn.app.state.gateway


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    # Routes commit explicitly (the request is the unit of work); whatever is left uncommitted
    # when the request ends, by an error or otherwise, is rolled back.
    async with state(request).sessionmaker() as session:
        yield session


# `async def`, though they only read the state: FastAPI runs a plain `def` dependency in its
# thread pool, a thread hop per dependency per request (about 4% of the gateway's CPU under load).
async def _settings(request: Request) -> Settings:
    return state(request).settings


async def _signer(request: Request) -> UrlSigner:
    return state(request).signer


async def _storage(request: Request) -> Storage:
    return state(request).storage


async def _bus(request: Request) -> EventBus:
    return state(request).bus


async def _guard(request: Request) -> OutboundGuard:
    return state(request).outbound_guard


async def _secret_box(request: Request) -> SecretBox:
    return state(request).secret_box


SessionDep = Annotated[AsyncSession, Depends(_session)]
SettingsDep = Annotated[Settings, Depends(_settings)]
SignerDep = Annotated[UrlSigner, Depends(_signer)]
StorageDep = Annotated[Storage, Depends(_storage)]
BusDep = Annotated[EventBus, Depends(_bus)]
GuardDep = Annotated[OutboundGuard, Depends(_guard)]
SecretBoxDep = Annotated[SecretBox, Depends(_secret_box)]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer cgw_...`")


async def charge(request: Request, session: AsyncSession, principal: Principal) -> None:
    """Spend one token of the caller's request rate (app/domain/ratelimit.py) in the session's
    transaction; over the rate: 429. The RateLimit header fields go on the response
    (app/api/ratelimit.py). The caller commits, at once: until then the user's bucket row stays
    locked (on SQLite, the database's write lock is held)."""
    if principal.unlimited:
        return
    decision = await ratelimit.spend(session, principal.user_id, int(principal.limits["rate_per_minute"]))
    if not decision.allowed:
        raise decision.error()
    set_ratelimit_headers(request, decision.headers)


async def charge_refused(request: Request, session: AsyncSession, principal: Principal) -> None:
    """A submit refused before its job was stored counts against the rate too (over it, this raises
    the 429 instead): whatever the request wrote is rolled back, and its token is spent."""
    await session.rollback()
    await charge(request, session, principal)
    await session.commit()


async def authorize(
    request: Request, session: AsyncSession, settings: Settings, key: str | None
) -> Principal:
    """Authenticate a key and spend a token of its user's rate, committed before the route runs:
    the token stays spent even if the request fails later."""
    principal = await authenticate(session, key, settings, state(request).principals)
    await charge(request, session, principal)
    await session.commit()
    return principal


async def _principal(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    return await authorize(request, session, settings, credentials.credentials if credentials else None)


async def caller(
    request: Request, session: AsyncSession, credentials: HTTPAuthorizationCredentials | None
) -> Principal:
    """The caller of the key sent, not yet counted against its rate."""
    key = credentials.credentials if credentials else None
    gateway = state(request)
    return await authenticate(session, key, gateway.settings, gateway.principals)


async def _authenticated(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    return await caller(request, session, credentials)


# The caller, its request already counted against its rate (every route but generate).
PrincipalDep = Annotated[Principal, Depends(_principal)]
# The caller, not yet counted: a submit spends its token with `charge` in the transaction that
# stores the job, so that the token's row lock also serializes the user's quota checks
# (POST /v1/generate makes its caller itself with `caller`, in a session of its own).
UncountedPrincipalDep = Annotated[Principal, Depends(_authenticated)]
# The key as sent, for a route that authenticates it itself (in a session of its own).
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def _admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise Forbidden("This route is for admins.")
    return principal


AdminDep = Annotated[Principal, Depends(_admin)]
