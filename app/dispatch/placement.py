"""One dispatcher round's placement: which backends take work, how much, and where each job goes.

A plan lives for one round. It knows which backends are ready (up, owned, reconciled, capabilities
known, not draining), how many jobs each wants claimed, and what each backend lacks for a job
(worked out once per round). The scheduler asks it whether a job can be placed at all; a job no
known backend can ever run is noted to fail, one that waits for a capable backend gets a reason.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from app.db.models import Job
from app.dispatch.backend import BackendLink, Prepared
from app.dispatch.capabilities import checkpoint_of
from app.dispatch.pool import BackendPool

# Jobs claimed in reserve per backend beyond its in-flight slots.
PREPARE_AHEAD = 1

log = logging.getLogger("app.dispatch")


class RoundPlan:
    def __init__(self, pool: BackendPool, max_inflight: int) -> None:
        """`pool`: every backend this process follows (those not ready count for whether a job can
        run at all), and, with several replicas, what the others' backends can run."""
        self.pool = pool
        links = self.links = pool.links
        self.cap = max_inflight
        self.ready = [
            link
            for link in links
            if link.healthy
            and link.may_act()
            and not link.needs_reconcile
            and link.capabilities is not None
            and not link.draining
        ]
        # How many jobs each ready backend wants claimed, and the lease it claims them under.
        self.want: dict[str, int] = {}
        self.fences = {link.url: link.fence for link in self.ready}
        # What the round claimed, per backend URL.
        self.claimed: dict[str, list[Prepared]] = defaultdict(list)
        # Jobs no known backend can run (they fail, with what is missing), and jobs that wait for a
        # capable backend (with the reason shown to their owner).
        self.unrunnable: dict[str, list[str]] = {}
        self.waiting: dict[str, str] = {}
        # Jobs that raised while being looked at or claimed: they fail alone (internal_error).
        self.broken: list[str] = []
        self._gaps: dict[tuple[str, str], list[str] | None] = {}

    def fill_free_slots(self) -> dict[str, list[Prepared]]:
        """Move prompts claimed in reserve into free slots (no database on that path): what is to
        be sent now, per backend URL. Then size what each backend wants claimed: its free slots,
        and `PREPARE_AHEAD` in reserve."""
        sends: dict[str, list[Prepared]] = defaultdict(list)
        for link in self.ready:
            while link.prepared and link.free_slots(self.cap):
                item = link.prepared.popleft()
                link.slots.add(item.prompt_id)
                sends[link.url].append(item)
        self.want = {
            link.url: link.free_slots(self.cap) + max(0, PREPARE_AHEAD - len(link.prepared))
            for link in self.ready
        }
        return sends

    def wanted(self) -> int:
        return sum(self.want.values())

    def missing(self, link: BackendLink, job: Job) -> list[str] | None:
        """What a backend lacks for a job, worked out once per round."""
        key = (link.url, job.id)
        if key not in self._gaps:
            self._gaps[key] = link.missing(job.workflow)
        return self._gaps[key]

    def placeable(self, job: Job) -> bool:
        """Whether a ready backend can run the job (the scheduler's `accept`)."""
        try:
            return self._placeable(job)
        except Exception:  # noqa: BLE001
            log.exception("job %s: unexpected error while placing it", job.id)
            self.broken.append(job.id)
            return False

    def _placeable(self, job: Job) -> bool:
        if any(self.missing(link, job) == [] for link in self.ready):
            return True
        if self.pool.leases is not None and self.pool.peers_can_run(job.workflow):
            return False  # another replica's backend can: that replica picks it
        self.note_unrunnable(job)
        if job.id not in self.unrunnable:
            lacking = min((self.missing(link, job) or [] for link in self.ready), key=len, default=[])
            self.waiting[job.id] = (
                "No healthy backend can run it now; waiting for one with " + "; ".join(lacking[:5]) + "."
            )
        return False

    def note_unrunnable(self, job: Job) -> None:
        """A job that every registered backend lacks something for fails now (the other replicas'
        backends as their owners recorded them); one that waits for a backend whose capabilities
        are not known yet stays queued."""
        everywhere = self.pool.capabilities_everywhere()
        if not everywhere:
            return
        own = [self.missing(link, job) or [] for link in self.links]
        reasons = own + [caps.missing(job.workflow) for caps in everywhere[len(self.links) :]]
        if all(reasons):
            self.unrunnable[job.id] = min(reasons, key=len)

    def route(self, job: Job) -> str | None:
        """Among capable backends with room: the least loaded, then one with the checkpoint warm."""
        checkpoint = checkpoint_of(job.workflow)
        capable = [link for link in self.ready if self.want[link.url] > 0 and self.missing(link, job) == []]
        if not capable:
            return None
        best = max(
            capable,
            key=lambda link: (
                self.want[link.url],
                -(link.queue_remaining or 0),
                checkpoint is not None and link.last_checkpoint == checkpoint,
            ),
        )
        return best.url

    def claimed_for(self, url: str, item: Prepared) -> None:
        self.want[url] -= 1
        self.claimed[url].append(item)
