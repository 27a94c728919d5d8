"""Replicas started together on an empty database: each prepares it (the bootstrap admin, the
built-in templates, the configured backends) and none fails on another's rows."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sqlalchemy import func, select

from app.config import Settings
from app.db.engine import create_engine, create_sessionmaker
from app.db.models import Backend, Template, User
from app.main import _prepare_database


async def test_replicas_starting_together_prepare_the_database_once(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(comfyui_urls=["http://127.0.0.1:9", "http://127.0.0.1:10"])
    engines = [create_engine(settings.database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(
            *(_prepare_database(settings, create_sessionmaker(engine)) for engine in engines),
            return_exceptions=True,
        )
        # Every replica started, and all sign URLs with the same secret.
        assert not [r for r in results if isinstance(r, BaseException)], results
        assert len(set(results)) == 1
        async with create_sessionmaker(engines[0])() as session:
            assert (await session.execute(select(func.count()).select_from(User))).scalar_one() == 1
            assert (await session.execute(select(func.count()).select_from(Backend))).scalar_one() == 2
            names = (await session.execute(select(Template.name))).scalars().all()
            assert names and len(names) == len(set(names))
    finally:
        for engine in engines:
            await engine.dispose()
