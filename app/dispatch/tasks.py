"""The dispatcher's background tasks: one supervisor that every part spawns its work through.

A backend's socket reader, its health and capability timers, a job's collection, an upload and a
lease let go all run as tasks of their own, so that no round and no other backend waits for them.
The supervisor keeps them (an unreferenced task may be garbage-collected mid-flight), logs one that
fails, and ends them within a bounded time when the dispatcher stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("app.dispatch")


class TaskSupervisor:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        # Set when the dispatcher stops: timers that run until then end at their next turn.
        self.closing = False

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def wind_down(self, grace: float, *, cancel_now: tuple[str, ...]) -> None:
        """End every task: those named with a `cancel_now` prefix (timers) at once, the others
        (work under way) after `grace` seconds."""
        for task in self._tasks:
            if task.get_name().startswith(cancel_now):
                task.cancel()
        tasks = [t for t in self._tasks if not t.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
