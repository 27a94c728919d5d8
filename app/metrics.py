"""Prometheus metrics. Each app gets its own registry, so several apps in one process (tests) never clash."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from app.db.models import Job


class Metrics:
    # Over 60 lines on purpose: a flat list of metric declarations, one per attribute, reads best whole.
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Per user (its id: names change) and per backend: who uses the GPUs, and how each backend fares.
        self.jobs_submitted = Counter(
            "gateway_jobs_submitted_total",
            "Jobs accepted by /v1/generate, by template (`(workflow)` for raw workflows) and user id",
            ["template", "user"],
            registry=self.registry,
        )
        self.jobs_finished = Counter(
            "gateway_jobs_finished_total",
            "Jobs that reached a terminal status, by status, user id and backend (`none`: never sent to one)",
            ["status", "user", "backend"],
            registry=self.registry,
        )
        self.job_run_seconds = Histogram(
            "gateway_job_run_seconds",
            "From start on a backend to the end, for finished jobs, by backend",
            ["backend"],
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
        )
        self.jobs_active = Gauge(
            "gateway_jobs_active",
            "Jobs queued or running now, by status and user id, from the database (all replicas' jobs)",
            ["status", "user"],
            registry=self.registry,
        )
        # What jobs_active exports now, by label set (app/domain/queue_metrics.py).
        self.jobs_active_exported: dict[tuple[str, str], int] = {}
        # The hour (since the epoch) in which the refresh last pruned old per-hour job counters.
        self.hour_counters_pruned: int | None = None
        self.dispatch_round_seconds = Histogram(
            "gateway_dispatch_round_seconds",
            "Time of one dispatcher round (reconcile, fail over, pick and claim, send, cancels)",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.backend_up = Gauge(
            "gateway_backend_up", "1 while the backend is healthy", ["backend"], registry=self.registry
        )
        self.backend_inflight = Gauge(
            "gateway_backend_inflight",
            "Prompts handed to the backend and not finished",
            ["backend"],
            registry=self.registry,
        )
        self.backend_owned = Gauge(
            "gateway_backend_owned",
            "1 for each backend whose lease this replica holds (several dispatching replicas on PostgreSQL)",
            ["backend"],
            registry=self.registry,
        )
        self.live_lagged = Counter(
            "gateway_live_subscribers_lagged_total",
            "Live streams that fell behind and dropped events, then resynchronised: scope job (SSE) or user (/v1/ws)",
            ["scope"],
            registry=self.registry,
        )
        # Webhooks (app/webhooks/sender.py)
        self.webhook_attempts = Counter(
            "gateway_webhook_attempts_total",
            "Webhook delivery attempts by outcome (succeeded, failed, refused: the address may not be reached)",
            ["outcome"],
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "gateway_webhook_deliveries_total",
            "Webhook deliveries that ended: succeeded, or failed for good (attempts exhausted or 410)",
            ["status"],
            registry=self.registry,
        )
        self.webhook_attempt_seconds = Histogram(
            "gateway_webhook_attempt_seconds",
            "Duration of webhook delivery attempts",
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30),
        )

    def count_finished(self, job: Job) -> None:
        """A job reached a terminal status (counted once, by the process that moved it there)."""
        backend = job.backend or "none"
        self.jobs_finished.labels(job.status, job.user_id, backend).inc()
        if job.started_at and job.finished_at:
            self.job_run_seconds.labels(backend).observe((job.finished_at - job.started_at).total_seconds())
