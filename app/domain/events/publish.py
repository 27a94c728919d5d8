"""What the dispatcher tells the rest of the gateway about its jobs.

Status and output events need no call here: the transitions log them, and the event log
publishes them once their transaction committed (app/domain/events/log.py). Progress and previews
come from the backend's socket and go through here.
"""

from __future__ import annotations

from typing import Any

from app.db.models import TERMINAL, Job
from app.domain.events.log import EventLog
from app.metrics import Metrics


class Notifier:
    """The dispatcher's one outlet: it needs these five calls, not the event log and the metrics
    registry themselves (so its tests can hand it a recorder, and the log can change alone)."""

    def __init__(self, events: EventLog, metrics: Metrics) -> None:
        self._events = events
        self._metrics = metrics

    def publish(self, job: Job) -> None:
        """A transition committed (its events are already on their way): count it."""
        if job.status in TERMINAL:
            self._metrics.count_finished(job)

    def progress(self, job_id: str, user_id: str, progress: dict[str, Any]) -> None:
        self._events.progress(job_id, user_id, progress)

    def preview(self, job_id: str, user_id: str, content_type: str, image: bytes, node: str | None) -> None:
        self._events.preview(job_id, user_id, content_type, image, node)

    def node_started(self, job_id: str, user_id: str, progress: dict[str, Any]) -> None:
        self._events.node_started(job_id, user_id, progress)

    async def settle(self, job_id: str) -> None:
        """Before a job's final transition: its progress so far is logged first."""
        await self._events.settle(job_id)
