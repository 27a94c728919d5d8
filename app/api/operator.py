"""Who may read operator data (/metrics, the detail of /readyz): the scrape token
(GATEWAY_METRICS_TOKEN) or an admin's key. Both hold every user id and the backends' URLs."""

from __future__ import annotations

from fastapi import Request

from app.api import deps
from app.domain.errors import Forbidden, Unauthorized
from app.domain.keys import same_secret
from app.domain.users import authenticate


def bearer(request: Request) -> str | None:
    scheme, _, credential = request.headers.get("authorization", "").partition(" ")
    return (credential.strip() or None) if scheme.lower() == "bearer" else None


async def require_operator(request: Request) -> None:
    """Raises Unauthorized without a valid credential, Forbidden for a key that is not an admin's."""
    credential = bearer(request)
    if credential is None:
        raise Unauthorized("Send the metrics token or an admin key as 'Authorization: Bearer <token>'.")
    settings = deps.state(request).settings
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else ""
    if token and same_secret(credential, token):
        return
    async with deps.state(request).sessionmaker() as session:
        principal = await authenticate(session, credential, settings)
    if not principal.is_admin:
        raise Forbidden("Operator data is for admins and the metrics scraper.")


async def is_operator(request: Request) -> bool:
    """For routes that answer everyone but tell operators more: a wrong or failing credential
    (the database may be what is down) is simply not an operator's."""
    try:
        await require_operator(request)
    except Exception:  # noqa: BLE001 - anything but success means "anonymous"
        return False
    return True
