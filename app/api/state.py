"""What the API sees of the running gateway: one typed state, built by the lifespan (app/main.py) and
reached from routes through `deps.state(request)`.

The dispatcher is seen through `DispatcherPort`, the calls the API makes of it and nothing else:
the API never holds the dispatcher's internals (links, tracker, scheduler).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.api.live_slots import LiveSlots
from app.config import Settings
from app.domain.events.bus import EventBus
from app.domain.events.log import EventLog
from app.domain.events.relay import EventRelay
from app.domain.read_cache import ReadCache
from app.domain.retention import RetentionService
from app.domain.uploads import UrlFetcher
from app.domain.webhook_secrets import SecretBox
from app.loops import Loop
from app.metrics import Metrics
from app.net.ssrf import OutboundGuard
from app.storage.base import Storage
from app.storage.signing import UrlSigner

if TYPE_CHECKING:
    from app.db.models import Job
    from app.domain.users import Principal
    from app.templates import TemplateDocument


class DispatcherPort(Protocol):
    """What the API tells the dispatcher (after its transaction committed) and asks of it."""

    def job_submitted(self, user_id: str) -> None:
        """A job of this user's was stored: dispatch soon."""

    async def job_canceled(self, job: Job) -> None:
        """A job was canceled: take it off its backend now."""

    async def take_off(self, job: Job) -> None:
        """An admin deletes a canceled job: its prompt leaves its backend now."""

    def users_changed(self) -> None:
        """A user's limits or state changed (here or on another replica): forget what was cached."""

    def backends_changed(self, url: str | None = None, *, draining: bool | None = None) -> None:
        """The admin API changed the pool (`url` drained or resumed, or added, or removed)."""

    async def probe_health(self) -> None:
        """Make `backend_health` current (on a replica that does not dispatch)."""

    def backend_health(self) -> dict[str, bool]:
        """Each backend's URL: healthy or not."""

    def draining(self) -> list[str]:
        """The URLs of the backends that are draining."""

    def backend_live(self, url: str) -> dict[str, Any] | None:
        """What the dispatcher knows of a backend now (health, queue, capabilities), for admins."""

    def object_info(self) -> dict[str, Any] | None:
        """A backend's /object_info, for checking workflows and templates against."""


@dataclass(frozen=True, slots=True)
class GatewayState:
    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    storage: Storage
    signer: UrlSigner
    bus: EventBus
    event_log: EventLog
    metrics: Metrics
    live_slots: LiveSlots
    dispatcher: DispatcherPort
    # Woken after an admin retries a delivery, so that it goes out now.
    webhook_sender: Loop
    outbound_guard: OutboundGuard
    secret_box: SecretBox
    # Image params given as URLs, fetched through the one outbound guard.
    fetch_url: UrlFetcher
    retention: RetentionService
    event_relay: EventRelay
    # Valid API keys' callers, and template documents (app/domain/read_cache.py); the admin routes
    # forget them after a change commits.
    principals: ReadCache[Principal]
    templates: ReadCache[TemplateDocument]

    def forget_cached(self, *_: object) -> None:
        """A key, a user or a template changed and the change committed (any arguments are
        ignored: this is also a NOTIFY listener)."""
        self.principals.forget_all()
        self.templates.forget_all()
        self.dispatcher.users_changed()

    # The loops this process runs, in the order they started: /readyz fails while one is down.
    loops: tuple[Loop, ...] = ()
