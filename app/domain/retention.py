"""Deleting files: a finished job on request (DELETE /v1/jobs/{id}), and everything past the
deployment's retention (GATEWAY_RETENTION_DAYS) in a supervised loop.

Rows go first, in a committed transaction, then the files: a crash in between leaves files
without rows (harmless, and cleared with the job's prefix by a later delete), never rows that
point at missing files. An expired job keeps its row as a tombstone: its outputs are gone and
`outputs_expired_at` says when.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import jobs as repo
from app.db import uploads as uploads_repo
from app.db.models import TERMINAL, Job
from app.db.types import utcnow
from app.domain.errors import Conflict, NotFound
from app.domain.users import Principal
from app.loops import Backoff, Loop
from app.storage.base import Storage

log = logging.getLogger("app.retention")

BATCH = 200


async def delete_job(session: AsyncSession, principal: Principal, job_id: str) -> str:
    """Delete a finished job and its output rows (the caller commits, then deletes the files under
    the returned prefix). Its owner may, and admins may for any user's job; a job that is not
    finished is a 409 (cancel it first)."""
    job = await repo.get_job(session, job_id, user_id=None if principal.is_admin else principal.user_id)
    if job is None:
        raise NotFound(f"There is no job {job_id!r}.")
    if job.status not in TERMINAL or job.cancel_requested:
        raise Conflict(
            f"The job is {job.status}{' and still being taken off its backend' if job.cancel_requested else ''}; "
            "only a finished job can be deleted (cancel it first).",
        )
    await repo.delete_job(session, job.id, with_events=False)
    return f"{job.id}/"


async def purge_job(session: AsyncSession, job: Job) -> str:
    """An admin's delete of any job, finished or not (an unfinished one is canceled and taken off its
    backend first, see app/api/admin.py): the row, its outputs and its logged events (the caller
    commits, then deletes the files under the returned prefix)."""
    await repo.delete_job(session, job.id, with_events=True)
    return f"{job.id}/"


class RetentionService(Loop):
    """Deletes outputs of jobs finished more than `retention_days` ago, and uploads older than that,
    every GATEWAY_RETENTION_CHECK_SECONDS."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], storage: Storage, settings: Settings
    ) -> None:
        every = settings.retention_check_seconds
        # A failed pass is tried again sooner than the next one was due, never more often than
        # the backoff allows: deleting is idempotent.
        super().__init__(
            "retention", interval=every, backoff=Backoff(initial=min(every, 10.0), cap=every), logger=log
        )
        self._sessionmaker = sessionmaker
        self._storage = storage
        self._settings = settings

    async def run_once(self, now: datetime | None = None) -> tuple[int, int]:
        """One pass; returns (jobs whose outputs expired, uploads deleted)."""
        days = self._settings.retention_days
        if not days:
            return 0, 0
        cutoff = (now or utcnow()) - timedelta(days=days)
        jobs = uploads = 0
        while batch := await self._expire_outputs(cutoff):
            jobs += len(batch)
        while batch := await self._expire_uploads(cutoff):
            uploads += len(batch)
        if jobs or uploads:
            log.info("retention: outputs of %d job(s) and %d upload(s) deleted", jobs, uploads)
        return jobs, uploads

    async def _expire_outputs(self, cutoff: datetime) -> list[str]:
        async with self._sessionmaker() as session:
            ids = await repo.finished_before(session, cutoff, BATCH)
            if not ids:
                return []
            await repo.expire_outputs(session, ids)
            await session.commit()
        for job_id in ids:
            await self._storage.delete_prefix(f"{job_id}/")
        return ids

    async def _expire_uploads(self, cutoff: datetime) -> list[str]:
        async with self._sessionmaker() as session:
            rows = await uploads_repo.created_before(session, cutoff, BATCH)
            if not rows:
                return []
            await uploads_repo.delete_ids(session, [upload_id for upload_id, _ in rows])
            await session.commit()
        for _, key in rows:
            await self._storage.delete(key)
        return [upload_id for upload_id, _ in rows]
