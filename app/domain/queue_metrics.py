"""Gauges of the work waiting and running, per user, read from the rows (so every replica exports the
whole deployment's numbers, and a restart loses nothing): what GPU autoscaling and alerts watch.

Read every GATEWAY_METRICS_REFRESH_SECONDS from the counters the database keeps (JobCount), not
counted from the queue, and not a query per scrape.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import usage
from app.db.types import utcnow
from app.loops import Backoff, Loop
from app.metrics import Metrics

log = logging.getLogger("app.metrics")


async def refresh(sessionmaker: async_sessionmaker[AsyncSession], metrics: Metrics) -> None:
    async with sessionmaker() as session:
        rows = await usage.nonzero_counts(session)
        # Per-hour creation counters older than any quota window (24 h) are of no more use. A new
        # hour makes at most one a user old: a write once an hour is enough, not one per refresh.
        hour = int(utcnow().timestamp()) // 3600
        if metrics.hour_counters_pruned != hour:
            await usage.forget_hours_before(session, utcnow() - timedelta(hours=26))
            await session.commit()
            metrics.hour_counters_pruned = hour
    counts: dict[tuple[str, str], int] = {}
    for state, user_id, n in rows:
        # Handed to a backend but not started is `queued` to users, and here.
        status = "queued" if state == "dispatched" else state
        counts[(status, user_id)] = counts.get((status, user_id), 0) + int(n)
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


class JobGauges(Loop):
    """`refresh` every GATEWAY_METRICS_REFRESH_SECONDS; a failed one never takes the gateway down."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], metrics: Metrics, every: float
    ) -> None:
        super().__init__(
            "job gauges", interval=every, backoff=Backoff(initial=every, cap=max(every, 60.0)), logger=log
        )
        self._sessionmaker = sessionmaker
        self._metrics = metrics

    async def run_once(self) -> None:
        await refresh(self._sessionmaker, self._metrics)
