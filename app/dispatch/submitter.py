"""Sending a claimed job to its backend: its input images staged, then `POST /prompt`.

The job was claimed (and the claim committed) before it gets here, so the tracker knows its prompt
id before the first message about it arrives. Each step checks again that the prompt is still
wanted (not canceled meanwhile) and that this replica may still act on the backend (its lease).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from app.comfy.errors import BackendUnavailable, ComfyError, PromptRejected
from app.config import Settings
from app.dispatch import job_errors, staging
from app.dispatch.backend import BackendLink, InFlight, Prepared
from app.dispatch.capabilities import checkpoint_of
from app.dispatch.tasks import TaskSupervisor
from app.dispatch.tracker import Tracker
from app.storage.base import Storage

log = logging.getLogger("app.dispatch")


class Submitter:
    def __init__(
        self, *, settings: Settings, storage: Storage, tracker: Tracker, tasks: TaskSupervisor
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.tracker = tracker
        self.tasks = tasks

    def send(self, link: BackendLink, items: list[Prepared]) -> asyncio.Task[None] | None:
        """Submit a backend's prompts. Those with input images to upload first run on their own,
        supervised, so the round (and every other backend) never waits for an upload; the rest
        are awaited by the round, which keeps their order."""
        # A copy: the task reads its list when it runs, and the caller goes on adding to its own
        # (the round's tally of what it sent), which sent those prompts a second time.
        items = list(items)
        if any(item.inputs for item in items):
            for item in items:
                link.submitting.add(item.prompt_id)
            self.tasks.spawn(self._submit_all(link, items), f"stage and submit {items[0].job_id}")
            return None
        return asyncio.create_task(self._submit_all(link, items))

    async def _submit_all(self, link: BackendLink, items: list[Prepared]) -> None:
        # One backend's prompts in order: ComfyUI numbers them as they arrive.
        for item in items:
            await self._submit(link, item)

    async def _submit(self, link: BackendLink, item: Prepared) -> None:
        try:
            await self._submit_one(link, item)
        except Exception as exc:  # noqa: BLE001 - whatever one job does, the slot it holds comes back
            # The POST may have reached the backend: the prompt is taken off it too.
            await self.tracker.fail_unexpected(
                link, item.prompt_id, "staging or submitting it", exc, stop=True
            )
            link.release(item.prompt_id)
            link.submitting.discard(item.prompt_id)

    async def _submit_one(self, link: BackendLink, item: Prepared) -> None:
        prompt_id = item.prompt_id
        flight = link.inflight.get(prompt_id)
        # Canceled while it waited, or the lease was lost before it was sent (its claim is then
        # the new owner's to reconcile).
        if flight is None or not link.may_act():
            self._withdraw(link, prompt_id)
            return
        link.last_checkpoint = checkpoint_of(item.workflow) or link.last_checkpoint
        workflow = await self._stage(link, item, flight) if item.inputs else item.workflow
        if workflow is None:
            return
        if not link.may_act():
            self._withdraw(link, prompt_id)
            return
        if await self._post(link, item, workflow, flight):
            await self._take_off_if_given_up(link, prompt_id)

    @staticmethod
    def _withdraw(link: BackendLink, prompt_id: str) -> None:
        """Not sent, and not to be: its slot comes back."""
        link.release(prompt_id)
        link.submitting.discard(prompt_id)

    async def _stage(self, link: BackendLink, item: Prepared, flight: InFlight) -> dict[str, Any] | None:
        """Upload the job's input images to the backend: the workflow that names them there, or
        None when the job went no further (its outcome is recorded)."""
        prompt_id = item.prompt_id
        try:
            workflow = await staging.stage(link.client, self.storage, item.job_id, item.workflow, item.inputs)
        except staging.InputMissing as exc:
            link.submitting.discard(prompt_id)
            await self.tracker.fail(link, prompt_id, job_errors.input_missing(exc.param))
            return None
        except BackendUnavailable as exc:
            # No prompt was queued: back to the queue, and this was no attempt.
            link.submitting.discard(prompt_id)
            link.mark_unreachable(str(exc), self.settings.backend_retry_seconds)
            await self.tracker.requeue(link, prompt_id, flight, count_attempt=False)
            return None
        except ComfyError as exc:
            # The backend refused an upload (e.g. its own size limit): the job cannot run there.
            link.submitting.discard(prompt_id)
            await self.tracker.fail(link, prompt_id, job_errors.staging_failed(str(exc)))
            return None
        if prompt_id not in link.inflight:  # canceled while its inputs were uploaded
            self._withdraw(link, prompt_id)
            return None
        return workflow

    async def _post(
        self, link: BackendLink, item: Prepared, workflow: dict[str, Any], flight: InFlight
    ) -> bool:
        """`POST /prompt`: True when the backend queued it."""
        prompt_id = item.prompt_id
        try:
            await link.client.queue_prompt(workflow, prompt_id=prompt_id, client_id=link.client_id)
        except PromptRejected as exc:
            link.submitting.discard(prompt_id)
            await self.tracker.fail(link, prompt_id, job_errors.invalid_workflow(exc.error, exc.node_errors))
            return False
        except BackendUnavailable as exc:
            link.submitting.discard(prompt_id)
            link.mark_unreachable(str(exc), self.settings.backend_retry_seconds)
            if not exc.request_sent:
                # It never left the gateway: back to the queue, and this was no attempt.
                await self.tracker.requeue(link, prompt_id, flight, count_attempt=False)
            # Otherwise the backend may have it: reconciliation (needs_reconcile) decides.
            return False
        except ComfyError as exc:
            link.submitting.discard(prompt_id)
            link.mark_unreachable(str(exc), self.settings.backend_retry_seconds)
            return False
        link.submitting.discard(prompt_id)
        link.mark_reachable()
        return True

    @staticmethod
    async def _take_off_if_given_up(link: BackendLink, prompt_id: str) -> None:
        if prompt_id not in link.inflight and link.may_act():
            # Given up while its POST was under way (e.g. deleted by an admin): nothing follows
            # it, so it must not run. (A prompt that already ended is not harmed by this.)
            try:
                await link.client.delete_from_queue([prompt_id])
                await link.client.interrupt(prompt_id)
            except ComfyError as exc:
                log.warning("taking prompt %s off %s failed: %s", prompt_id, link.url, exc)
