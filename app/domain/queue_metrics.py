"""Gauges of the work waiting and running, per user, read from the rows (so every replica exports the
whole deployment's numbers, and a restart loses nothing): what GPU autoscaling and alerts watch.

One grouped count every GATEWAY_METRICS_REFRESH_SECONDS, not a query per scrape.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db.jobs import ACTIVE
from app.db.models import Job
from app.metrics import Metrics

log = logging.getLogger("app.metrics")


async def refresh(sessionmaker: async_sessionmaker[AsyncSession], metrics: Metrics) -> None:
    async with sessionmaker() as session:
        rows = (
            await session.execute(
                select(Job.status, Job.user_id, func.count()).where(Job.status.in_(ACTIVE)).group_by(Job.status, Job.user_id)
            )
        ).all()
    counts = {(status, user_id): count for status, user_id, count in rows}
    gauge, exported = metrics.jobs_active, metrics.jobs_active_exported
    # A user whose jobs all ended shows 0 for one refresh, then leaves the export.
    for labels, last in list(exported.items()):
        if labels not in counts:
            if last == 0:
                gauge.remove(*labels)
                del exported[labels]
            else:
                counts[labels] = 0
    for labels, count in counts.items():
        gauge.labels(*labels).set(count)
        exported[labels] = count


async def run(sessionmaker: async_sessionmaker[AsyncSession], metrics: Metrics, every: float) -> None:
    """The supervised loop: a failed refresh is logged, and the next one tried."""
    while True:
        try:
            await refresh(sessionmaker, metrics)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - metrics must never take the gateway down
            log.exception("refreshing the job gauges")
        await asyncio.sleep(every)
