"""Tells live subscribers and metrics that a job changed, after its transaction committed."""

from __future__ import annotations

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

    async def job_changed(self, job_id: str, *, new_outputs: list[Output] = ()) -> dict[str, Any] | None:
        """Publish `output` events for new outputs, then the job's `status`. Returns the view."""
        async with self._sessionmaker() as session:
            job = await repo.get_job(session, job_id)
            if job is None:
                return None
            view = await self._view(session, job)
        for out in new_outputs:
            self._bus.publish(JobEvent(job.id, job.user_id, "output", output_view(out, self._signer)))
        terminal = job.status in TERMINAL
        self._bus.publish(JobEvent(job.id, job.user_id, "status", view, terminal=terminal))
        if terminal:
            self._metrics.jobs_finished.labels(job.status).inc()
            if job.started_at and job.finished_at:
                self._metrics.job_run_seconds.observe((job.finished_at - job.started_at).total_seconds())
        return view

    async def _view(self, session: AsyncSession, job: Job) -> dict[str, Any]:
        outputs = (await repo.outputs_for(session, [job.id]))[job.id]
        return job_view(job, outputs, self._signer, queue_position=await repo.queue_position(session, job))

    def progress(self, job_id: str, user_id: str, progress: dict[str, Any]) -> None:
        self._bus.publish(JobEvent(job_id, user_id, "progress", progress))
