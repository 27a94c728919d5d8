"""create_app() and its lifespan: the one place that builds and closes engines, clients and loops."""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import Depends, FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app import log_redaction
from app.api import (
    admin,
    admin_backends,
    events_sse,
    events_ws,
    generate,
    health,
    input_checks,
    jobs,
    me,
    openai_images,
    outputs,
    problems,
    templates,
    uploads,
)
from app.api.limits import BodySizeLimit
from app.api.live_slots import LiveSlots
from app.api.mcp_server import McpEndpoint
from app.api.ratelimit import RateLimitHeaders
from app.api.state import GatewayState
from app.api.v2 import routes as v2_routes
from app.config import Settings, get_settings
from app.console.routes import router as console_router
from app.db import changes, job_events
from app.db import leases as leases_repo
from app.db.engine import create_engine, create_sessionmaker, is_sqlite
from app.db.migrate import upgrade_async
from app.db.state import get_or_create, lock_startup
from app.db.webhooks import WAKE_KEY
from app.dispatch.dispatcher import Dispatcher
from app.dispatch.leases import TRUSTED, LeaseKeeper, lock_sqlite_dispatcher
from app.domain.backend_registry import pool_urls, register_configured_backends
from app.domain.events.bus import EventBus
from app.domain.events.log import EventLog
from app.domain.events.publish import Notifier
from app.domain.events.relay import EventRelay
from app.domain.fetch import make_fetcher
from app.domain.queue_metrics import JobGauges
from app.domain.read_cache import ReadCache
from app.domain.retention import RetentionService
from app.domain.templates import sync_builtins
from app.domain.users import ensure_bootstrap_admin
from app.domain.webhook_secrets import SecretBox
from app.loops import Loop
from app.metrics import Metrics
from app.net.ssrf import OutboundGuard, Resolver
from app.storage.base import Storage
from app.storage.factory import build_storage
from app.storage.signing import UrlSigner
from app.webhooks.sender import WebhookSender

log = logging.getLogger("app")


#: The OpenAPI description: live events over WebSocket are not in the spec, so they are told here.
_DESCRIPTION = (
    "A multi-user, durable API gateway in front of ComfyUI servers.\n\n"
    "**Live events over WebSocket** (not listed below: OpenAPI has no WebSocket routes): "
    "`GET /v1/ws` streams the events of all of the caller's jobs as JSON text frames "
    '`{"event", "job_id", "id", "data"}`: `status`, `progress`, `output` (the SSE route\'s events, with '
    "the same per-job `id`), `preview` with `?previews=true`; every user's jobs with `?all=true` (admins). "
    "The key comes as `?api_key=`, "
    '`Authorization: Bearer`, or the first frame (`{"api_key": "..."}` or the key alone). The server '
    'first sends `{"event": "subscribed"}`; a bad key gets an `error` frame (a problem) and close code '
    "1008; a user over its cap of live connections an `error` frame and 1013; a client too slow to keep "
    "up gets a `lagged` frame (re-read its jobs)."
)


def create_app(settings: Settings | None = None, *, outbound_resolver: Resolver | None = None) -> FastAPI:
    """`outbound_resolver` replaces DNS for outbound URLs (webhooks): for tests of what a host name
    resolves to at send time."""
    settings = settings or get_settings()
    log_redaction.install()
    # Built before the app, as its lifespan runs the MCP session manager (bound to `app` below).
    mcp: McpEndpoint | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Again: a logging configuration applied after create_app may have made new loggers.
        log_redaction.install()
        async with running_gateway(settings, outbound_resolver) as state:
            # The one attribute: routes reach it through deps.state(request).
            app.state.gateway = state
            assert mcp is not None
            async with mcp.manager.run():
                yield

    app = FastAPI(
        title="comfy-gateway",
        version="0.1.0",
        description=_DESCRIPTION,
        lifespan=lifespan,
        dependencies=[Depends(input_checks.url_params)],
    )
    _add_middleware(app, settings)
    mcp = _add_routes(app, settings)
    return app


def _add_middleware(app: FastAPI, settings: Settings) -> None:
    """The bounds on request bodies (per path where uploads are larger), and the rate-limit headers."""
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        paths={
            "/v1/uploads": settings.max_upload_bytes + uploads.MULTIPART_OVERHEAD,
            # An image and its mask.
            "/v1/images/edits": 2 * settings.max_upload_bytes + uploads.MULTIPART_OVERHEAD,
            "/api/v2/assets": settings.max_upload_bytes + uploads.MULTIPART_OVERHEAD,
        },
    )
    app.add_middleware(RateLimitHeaders)


def _add_routes(app: FastAPI, settings: Settings) -> McpEndpoint:
    """The routers, the problem handlers and the MCP endpoint (returned: the lifespan runs it)."""
    problems.install(app)
    for module in (
        generate,
        jobs,
        outputs,
        uploads,
        events_sse,
        events_ws,
        templates,
        me,
        admin,
        admin_backends,
        health,
        openai_images,
    ):
        app.include_router(module.router)
    if settings.console_enabled:
        app.include_router(console_router)
    mcp = McpEndpoint(app)
    # A plain route (not a mount, which would redirect /mcp to /mcp/); not in the OpenAPI spec, as
    # it speaks JSON-RPC (MCP's Streamable HTTP), not REST.
    # An ASGI app as the endpoint, which Route takes (its type names only request handlers).
    app.add_route("/mcp", mcp, methods=["GET", "POST", "DELETE"], include_in_schema=False)  # type: ignore[arg-type]
    app.include_router(v2_routes.router)
    return mcp


@asynccontextmanager
async def running_gateway(
    settings: Settings, outbound_resolver: Resolver | None = None
) -> AsyncIterator[GatewayState]:
    """Everything the gateway runs on, its loops started, as one typed state; all of it stopped and
    closed after, each part before what it still needs."""
    sqlite = is_sqlite(settings.database_url)
    # SQLite means one dispatching process: a second refuses to start, with a message that says
    # why (several dispatching replicas share the backends through leases on PostgreSQL).
    sqlite_lock = (
        lock_sqlite_dispatcher(settings.database_url) if sqlite and settings.run_dispatcher else None
    )
    if settings.auto_migrate:
        await upgrade_async(settings.database_url)
    # A session this replica leaves idle inside a transaction (paused, frozen) is ended by
    # PostgreSQL by the time its leases could have run out, so its locks hold up no other replica.
    idle = settings.backend_lease_seconds * TRUSTED
    engine = create_engine(settings.database_url, idle_in_transaction_seconds=idle)
    # The dispatcher has connections of its own: a burst of API requests queueing for the
    # database must never hold up the loop that keeps the GPUs busy. Its work (a round, and a
    # transition per prompt in flight) often needs more than four at once: with four kept and
    # eight opened on demand, it opened and closed a PostgreSQL connection every two jobs, each a
    # new server process, a handshake, type introspection and its statements prepared again. So it
    # keeps the twelve it may have (opened as needed).
    worker_engine = create_engine(
        settings.database_url, pool_size=12, max_overflow=0, idle_in_transaction_seconds=idle
    )
    # The outbound guard checks inside requests that hold a connection: it has one of its own.
    guard_engine = create_engine(settings.database_url, pool_size=1, idle_in_transaction_seconds=idle)
    storage = build_storage(settings)
    await storage.start()
    sessionmaker = create_sessionmaker(engine)
    secret = await _prepare_database(settings, sessionmaker)
    parts = _wire(
        settings,
        sessionmaker,
        create_sessionmaker(worker_engine),
        create_sessionmaker(guard_engine),
        storage,
        secret,
        outbound_resolver,
    )
    state, dispatcher = parts.state, parts.dispatcher
    await dispatcher.load()
    for loop in state.loops:
        await loop.start()
    try:
        yield state
    finally:
        await parts.gauges.stop()
        await state.retention.stop()
        # Stopped whether it ran or not: a replica that does not dispatch has probe clients to close.
        await dispatcher.stop()
        await state.event_log.stop()
        # The dispatcher's connections go before the sender gives back its leases: on SQLite a
        # write of theirs cut short by the stop could otherwise hold the lock those need.
        await worker_engine.dispose()
        await state.webhook_sender.stop()
        await guard_engine.dispose()
        await storage.close()
        await state.event_relay.stop()
        await engine.dispose()
        if sqlite_lock is not None:
            sqlite_lock.close()


@dataclass(frozen=True, slots=True)
class _Parts:
    state: GatewayState
    # The concrete ones, which the lifespan loads and stops (the API sees neither).
    dispatcher: Dispatcher
    gauges: JobGauges


def _wire(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    worker_sessionmaker: async_sessionmaker[AsyncSession],
    guard_sessionmaker: async_sessionmaker[AsyncSession],
    storage: Storage,
    secret: str,
    outbound_resolver: Resolver | None,
) -> _Parts:
    """Build the services and the loops, each given what it needs (nothing runs yet)."""
    metrics = Metrics()
    signer = UrlSigner(secret, settings.signed_url_ttl_seconds)
    bus = EventBus(on_lag=lambda sub: metrics.live_lagged.labels(sub.scope).inc())
    guard = _outbound_guard(settings, guard_sessionmaker, outbound_resolver)
    secret_box, webhook_sender = _webhooks(settings, sessionmaker, signer, guard, metrics, secret)
    event_log = EventLog(worker_sessionmaker, signer, bus, settings)
    # Names this replica: its own event announcements (PostgreSQL NOTIFY) and its leases.
    replica_id = uuid.uuid4().hex
    relay = _wire_events(
        settings, sessionmaker, worker_sessionmaker, bus, event_log, webhook_sender, replica_id
    )
    dispatcher = _dispatcher(
        settings, worker_sessionmaker, storage, Notifier(event_log, metrics), metrics, relay, replica_id
    )
    retention = RetentionService(worker_sessionmaker, storage, settings)
    gauges = JobGauges(sessionmaker, metrics, settings.metrics_refresh_seconds)
    state = GatewayState(
        settings=settings,
        sessionmaker=sessionmaker,
        storage=storage,
        signer=signer,
        bus=bus,
        event_log=event_log,
        metrics=metrics,
        live_slots=LiveSlots(settings.max_live_streams_per_user),
        dispatcher=dispatcher,
        webhook_sender=webhook_sender,
        outbound_guard=guard,
        secret_box=secret_box,
        fetch_url=make_fetcher(
            guard, max_bytes=settings.max_upload_bytes, timeout=settings.url_fetch_timeout_seconds
        ),
        retention=retention,
        event_relay=relay,
        principals=ReadCache(settings.auth_cache_seconds),
        templates=ReadCache(settings.auth_cache_seconds),
        loops=_loops_to_run(settings, event_log, relay, dispatcher, retention, webhook_sender, gauges),
    )
    # Other replicas' changes to keys, users and templates (PostgreSQL), and whatever was
    # announced while the relay was not listening: forget what was cached of them.
    relay.channels[changes.CHANNEL] = state.forget_cached
    relay.on_listening.append(state.forget_cached)
    return _Parts(state, dispatcher, gauges)


def _webhooks(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    signer: UrlSigner,
    guard: OutboundGuard,
    metrics: Metrics,
    secret: str,
) -> tuple[SecretBox, WebhookSender]:
    """The box users' webhook secrets are sealed in, and the sender. The sender shares the API's
    connections, not the dispatcher's: receivers' pace must never hold up the loop that keeps
    the GPUs busy."""
    box = SecretBox(settings.webhook_secret_key or secret)
    sender = WebhookSender(
        sessionmaker=sessionmaker, settings=settings, signer=signer, box=box, guard=guard, metrics=metrics
    )
    return box, sender


def _outbound_guard(
    settings: Settings,
    guard_sessionmaker: async_sessionmaker[AsyncSession],
    outbound_resolver: Resolver | None,
) -> OutboundGuard:
    # The backends stay closed to users' URLs whatever the allow-list covers (ComfyUI has no
    # per-user authorization); read at each check, since admins change the pool at run time.
    return OutboundGuard(
        settings.outbound_allowlist,
        resolver=outbound_resolver,
        forbidden=lambda: pool_urls(guard_sessionmaker, settings.comfyui_urls),
    )


def _dispatcher(
    settings: Settings,
    worker_sessionmaker: async_sessionmaker[AsyncSession],
    storage: Storage,
    notifier: Notifier,
    metrics: Metrics,
    relay: EventRelay,
    replica_id: str,
) -> Dispatcher:
    """The dispatcher, and on PostgreSQL its lease keeper: every dispatching replica follows only
    the backends it leases."""
    keeper = (
        LeaseKeeper(
            # Connections of its own (two: a renewal and a hand-over may overlap): a renewal
            # must never queue behind the dispatcher's and collectors' work for a connection,
            # or a busy replica would lose its leases for want of a pooled connection.
            create_engine(
                settings.database_url,
                pool_size=2,
                idle_in_transaction_seconds=settings.backend_lease_seconds * TRUSTED,
            ),
            replica_id=replica_id,
            lease_seconds=settings.backend_lease_seconds,
            name=settings.replica_name,
        )
        if settings.run_dispatcher and not is_sqlite(settings.database_url)
        else None
    )
    dispatcher = Dispatcher(
        sessionmaker=worker_sessionmaker,
        settings=settings,
        storage=storage,
        notifier=notifier,
        metrics=metrics,
        leases=keeper,
    )
    if keeper is not None:
        # A submit, a job's end or a lease given back on another replica wakes this one now; a
        # job submitted there is a submit here too (a newcomer's job takes the next free slot
        # rather than one behind the jobs this replica claimed in reserve). A job given back to
        # the queue (not its first event) only wakes: its reserves returned everywhere would
        # be given back in turn, and so on.
        def remote_event(event: job_events.Announced) -> None:
            if event.waking_status == "queued" and event.seq == 1:
                dispatcher.job_submitted(event.user_id)
            else:
                dispatcher.wake()

        relay.on_remote_event = remote_event
        relay.channels[leases_repo.CHANNEL] = keeper.nudge
    return dispatcher


def _wire_events(
    settings: Settings,
    sessionmaker: async_sessionmaker[AsyncSession],
    worker_sessionmaker: async_sessionmaker[AsyncSession],
    bus: EventBus,
    event_log: EventLog,
    webhook_sender: WebhookSender,
    replica_id: str,
) -> EventRelay:
    """Hook the sessions' commits to the webhook sender and the event log; returns the relay that
    brings other replicas' events to this one (`replica_id` tells this replica's own NOTIFYs)."""
    for maker in (sessionmaker, worker_sessionmaker):
        # Sessions that commit a job transition with a webhook wake the sender at once, and events
        # logged in a transaction reach this process's subscribers when it commits.
        maker.configure(info={WAKE_KEY: webhook_sender.wake})
        job_events.deliver_after_commit(maker, event_log.deliver, origin=replica_id)
    return EventRelay(settings.database_url, worker_sessionmaker, event_log, bus, origin=replica_id)


def _loops_to_run(
    settings: Settings,
    event_log: EventLog,
    relay: EventRelay,
    dispatcher: Dispatcher,
    retention: RetentionService,
    webhook_sender: WebhookSender,
    gauges: JobGauges,
) -> tuple[Loop, ...]:
    """The loops this process runs, in the order they start."""
    loops: list[Loop] = [event_log]
    if not is_sqlite(settings.database_url):
        # With SQLite there is one process: the after-commit delivery is all there is.
        loops.append(relay)
    if settings.run_dispatcher:
        loops.append(dispatcher)
        # Deleting is idempotent, so every replica that runs a dispatcher may run it too.
        if settings.retention_days:
            loops.append(retention)
    if settings.run_webhooks:
        loops.append(webhook_sender)
    loops.append(gauges)
    return tuple(loops)


async def _prepare_database(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> str:
    """The rows the gateway needs before it serves: the bootstrap admin, the built-in templates, the
    configured backends; returns the URL signing secret."""
    async with sessionmaker() as session:
        await lock_startup(session)
        await ensure_bootstrap_admin(session)
        await sync_builtins(session)
        await session.commit()
    secret = settings.signing_secret or await get_or_create(
        sessionmaker, "signing_secret", lambda: secrets.token_urlsafe(48)
    )
    if not settings.signing_secret and not settings.webhook_secret_key:
        # Loud on purpose: the operator may believe the database alone holds nothing usable.
        log.warning(
            "GATEWAY_SIGNING_SECRET and GATEWAY_WEBHOOK_SECRET_KEY are unset: the URL signing secret "
            "is kept in the database and users' webhook secrets are encrypted with a key derived "
            "from it, so a copy of the database alone reveals them (and can sign output URLs). "
            "Set both (or GATEWAY_*_FILE) from a secret store."
        )
    # The pool is the `backends` table: GATEWAY_COMFYUI_URLS is registered in it, beside the
    # backends admins added (which survive a restart that way).
    async with sessionmaker() as session:
        await lock_startup(session)
        # Only a process that dispatches prunes: an API-only replica started without the
        # setting must not take the others' backends out of the pool.
        await register_configured_backends(session, settings.comfyui_urls, prune=settings.run_dispatcher)
        await session.commit()
    return secret


def __getattr__(name: str) -> FastAPI:
    # `uvicorn app.main:app` works, without building an app (and reading settings) at import time.
    if name == "app":
        return create_app()
    raise AttributeError(name)
