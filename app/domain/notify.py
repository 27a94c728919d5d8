"""Tells live subscribers and metrics that a job changed, after its transaction committed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import jobs as repo
from app.db.jobs import TERMINAL
from app.db.models import Job, Output
from app.domain.events import EventBus, JobEvent
from app.domain.views import job_view, output_view
from app.metrics import Metrics
from app.storage.signing import UrlSigner


class Notifier:
    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], signer: UrlSigner, bus: EventBus, metrics: Metrics
    ) -> None:
        self._sessionmaker = sessionmaker
        self._signer = signer
        self._bus = bus
        self._metrics = metrics

    async def job_changed(self, job_id: str) -> dict[str, Any] | None:
        """Publish the job's current `status`, read from the database."""
        async with self._sessionmaker() as session:
            job = await repo.get_job(session, job_id)
            if job is None:
                return None
            outputs = (await repo.outputs_for(session, [job.id]))[job.id]
            position = await repo.queue_position(session, job)
        return self.publish(job, outputs, queue_position=position)

    def publish(self, job: Job, outputs: Sequence[Output] = (), *, new_outputs: Sequence[Output] = (), queue_position: int | None = None) -> dict[str, Any]:
        """Publish `output` events for new outputs, then the job's `status`, from a row in hand.

        Transitions return their row (UPDATE ... RETURNING), so this needs no database read.
        """
        for out in new_outputs:
            self._bus.publish(JobEvent(job.id, job.user_id, "output", output_view(out, self._signer)))
        view = job_view(job, list(outputs), self._signer, queue_position=queue_position)
        terminal = job.status in TERMINAL
        self._bus.publish(JobEvent(job.id, job.user_id, "status", view, terminal=terminal))
        if terminal:
            self._metrics.jobs_finished.labels(job.status).inc()
            if job.started_at and job.finished_at:
                self._metrics.job_run_seconds.observe((job.finished_at - job.started_at).total_seconds())
        return view

    def progress(self, job_id: str, user_id: str, progress: dict[str, Any]) -> None:
        self._bus.publish(JobEvent(job_id, user_id, "progress", progress))
