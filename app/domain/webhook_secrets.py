"""Users' webhook signing secrets (Standard Webhooks `whsec_` format): made on first need, rotated on
request with a grace period during which the old and the new secret both sign.

A secret must stay usable for HMAC, so it cannot be stored as a one-way hash: it is encrypted with
Fernet (AES-128-CBC + HMAC-SHA256, from `cryptography`) under a key derived from a server secret
(GATEWAY_WEBHOOK_SECRET_KEY, else the URL signing secret). It is never logged.
"""

from __future__ import annotations

import base64
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import webhooks as repo
from app.db.models import WebhookSecret
from app.db.types import utcnow

PREFIX = "whsec_"
log = logging.getLogger("app.webhooks")


class SecretBox:
    """Encrypts and decrypts webhook secrets at rest."""

    def __init__(self, server_secret: str) -> None:
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"comfy-gateway webhook secrets"
        ).derive(server_secret.encode())
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def open(self, ciphertext: str) -> str | None:
        """The secret, or None if it was sealed under another key (the server key was changed)."""
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            return None


def new_secret() -> str:
    # 32 random bytes, base64: the format the standardwebhooks libraries take as is.
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True, slots=True)
class SecretInfo:
    secret: str
    created_at: datetime
    # While a rotation's grace period runs: when the previous secret stops signing.
    previous_expires_at: datetime | None


async def _add(
    session: AsyncSession, box: SecretBox, user_id: str, generation: int, retire_before: datetime | None
) -> bool:
    """Commit a new generation; False when another request (or replica) added it first."""
    try:
        await repo.add_secret(
            session, user_id, generation, box.seal(new_secret()), retire_before=retire_before
        )
        await session.commit()
        return True
    except IntegrityError:
        await session.rollback()
        return False


async def _readable(session: AsyncSession, box: SecretBox, user_id: str) -> list[tuple[WebhookSecret, str]]:
    """The user's signing secrets with their clear values, newest first; made if there is none.

    A secret sealed under another server key cannot be read: it no longer signs, and when none is
    left a new one is made (the user fetches it from /v1/me/webhook-secret)."""
    # Read, or make one and read again: three rounds cover losing a race to make it (another
    # request's commit wins) on top of a changed server key.
    for _ in range(3):
        rows = [(row, box.open(row.ciphertext)) for row in await repo.secrets_of(session, user_id)]
        readable = [(row, value) for row, value in rows if value is not None]
        if len(readable) < len(rows):
            log.error(
                "webhook secrets of user %s were sealed under another key (GATEWAY_WEBHOOK_SECRET_KEY changed?)",
                user_id,
            )
        if readable:
            return readable
        latest = await repo.latest_generation(session, user_id)
        await _add(session, box, user_id, (latest.generation if latest else 0) + 1, retire_before=utcnow())
    raise RuntimeError("no readable webhook secret")  # pragma: no cover - the one just made is readable


async def signing_secrets(session: AsyncSession, box: SecretBox, user_id: str) -> list[str]:
    """The secrets that sign a user's webhooks now, newest first (made if the user has none). Commits."""
    return [value for _, value in await _readable(session, box, user_id)]


async def current(session: AsyncSession, box: SecretBox, user_id: str) -> SecretInfo:
    return _info(await _readable(session, box, user_id))


async def rotate(session: AsyncSession, box: SecretBox, user_id: str, grace_seconds: float) -> SecretInfo:
    """A new secret signs from now on; the ones before it keep signing for `grace_seconds`. Commits."""
    latest = await repo.latest_generation(session, user_id)
    retire = utcnow() + timedelta(seconds=grace_seconds)
    # Two rotations at once: the loser's generation is taken; it tries the next one.
    for _ in range(5):
        if await _add(session, box, user_id, (latest.generation if latest else 0) + 1, retire_before=retire):
            break
        latest = await repo.latest_generation(session, user_id)
    return _info(await _readable(session, box, user_id))


def _info(readable: list[tuple[WebhookSecret, str]]) -> SecretInfo:
    (newest, value), older = readable[0], readable[1:]
    expiries = [row.expires_at for row, _ in older if row.expires_at is not None]
    return SecretInfo(value, newest.created_at, max(expiries) if expiries else None)
