"""Request-scoped dependencies: the session, the caller, the shared services on app.state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.domain.errors import Forbidden
from app.domain.events import EventBus
from app.domain.users import Principal, authenticate
from app.storage.local import LocalStorage
from app.storage.signing import UrlSigner


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    # Routes commit explicitly (the request is the unit of work); whatever is left uncommitted
    # when the request ends, by an error or otherwise, is rolled back.
    async with request.app.state.sessionmaker() as session:
        yield session


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _signer(request: Request) -> UrlSigner:
    return request.app.state.signer


def _storage(request: Request) -> LocalStorage:
    return request.app.state.storage


def _bus(request: Request) -> EventBus:
    return request.app.state.bus


SessionDep = Annotated[AsyncSession, Depends(_session)]
SettingsDep = Annotated[Settings, Depends(_settings)]
SignerDep = Annotated[UrlSigner, Depends(_signer)]
StorageDep = Annotated[LocalStorage, Depends(_storage)]
BusDep = Annotated[EventBus, Depends(_bus)]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer cgw_...`")


async def _principal(
    session: SessionDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    return await authenticate(session, credentials.credentials if credentials else None, settings)


PrincipalDep = Annotated[Principal, Depends(_principal)]


async def _admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise Forbidden("This route is for admins.")
    return principal


AdminDep = Annotated[Principal, Depends(_admin)]
