"""create_app() and its lifespan: the one place that builds and closes engines, clients and loops."""

from __future__ import annotations

import logging
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api import admin, events, generate, health, jobs, me, outputs, problems, templates, ws
from app.api.limits import BodySizeLimit
from app.api.ratelimit import RateLimitHeaders
from app.config import Settings, get_settings
from app.db.engine import create_engine, create_sessionmaker
from app.db.migrate import upgrade_async
from app.db.state import get_or_create
from app.dispatch.dispatcher import Dispatcher
from app.db import job_events
from app.domain.event_log import EventLog
from app.domain.event_relay import EventRelay
from app.domain.events import EventBus
from app.domain.notify import Notifier
from app.domain.templates import sync_builtins
from app.domain.users import ensure_bootstrap_admin
from app.metrics import Metrics
from app.storage.local import LocalStorage
from app.storage.signing import UrlSigner

log = logging.getLogger("app")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.auto_migrate:
            await upgrade_async(settings.database_url)
        engine = create_engine(settings.database_url)
        sessionmaker = create_sessionmaker(engine)
        # The dispatcher has connections of its own: a burst of API requests queueing for the
        # database must never hold up the loop that keeps the GPUs busy.
        worker_engine = create_engine(settings.database_url, pool_size=4)
        worker_sessionmaker = create_sessionmaker(worker_engine)
        storage = LocalStorage(settings.storage_dir)
        storage.ensure_root()
        # Tells this replica's own event announcements (PostgreSQL NOTIFY) from the others'.
        replica_id = uuid.uuid4().hex

        async with sessionmaker() as session:
            await ensure_bootstrap_admin(session)
            await sync_builtins(session)
            await session.commit()
        secret = settings.signing_secret or await get_or_create(
            sessionmaker, "signing_secret", lambda: secrets.token_urlsafe(48)
        )
        # A stable client id per backend: ComfyUI sends a prompt's messages only to the socket of
        # the client id it was queued with, so after a restart we must reconnect with the same one.
        client_ids = {
            url: await get_or_create(sessionmaker, f"client_id:{url}", lambda: f"comfy-gateway-{uuid.uuid4()}")
            for url in settings.comfyui_urls
        }
        metrics = Metrics()
        signer = UrlSigner(secret, settings.signed_url_ttl_seconds)
        bus = EventBus()
        event_log = EventLog(worker_sessionmaker, signer, bus, settings)
        # Events logged in a transaction reach this process's subscribers when it commits.
        for maker in (sessionmaker, worker_sessionmaker):
            job_events.deliver_after_commit(maker, event_log.deliver, origin=replica_id)
        relay = EventRelay(settings.database_url, worker_sessionmaker, event_log, bus, origin=replica_id)
        notifier = Notifier(event_log, metrics)
        dispatcher = Dispatcher(
            sessionmaker=worker_sessionmaker,
            settings=settings,
            storage=storage,
            notifier=notifier,
            metrics=metrics,
            client_ids=client_ids,
        )

        state = app.state
        state.settings = settings
        state.engine = engine
        state.sessionmaker = sessionmaker
        state.storage = storage
        state.signer = signer
        state.bus = bus
        state.event_log = event_log
        state.event_relay = relay
        state.metrics = metrics
        state.notifier = notifier
        state.dispatcher = dispatcher
        state.dispatcher_wake = dispatcher.wake
        state.on_job_submitted = dispatcher.job_submitted
        state.on_job_canceled = dispatcher.job_canceled
        state.backend_health = dispatcher.backend_health
        state.object_info = dispatcher.object_info

        event_log.start()
        await relay.start()
        if settings.run_dispatcher:
            await dispatcher.start()
        try:
            yield
        finally:
            await dispatcher.stop()
            await relay.stop()
            await event_log.stop()
            await worker_engine.dispose()
            await engine.dispose()

    app = FastAPI(
        title="comfy-gateway",
        version="0.1.0",
        description="A multi-user, durable API gateway in front of ComfyUI servers.",
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RateLimitHeaders)
    problems.install(app)
    for module in (generate, jobs, outputs, events, ws, templates, me, admin, health):
        app.include_router(module.router)
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn app.main:app` works, without building an app (and reading settings) at import time.
    if name == "app":
        return create_app()
    raise AttributeError(name)
