"""The one shape of a background loop: a service with `run_once()` and a supervised `run()`.

A subclass writes one round (`run_once`); the base runs rounds on an interval or as soon as
`wake()` says something changed, and owns what every loop needs alike:

- a round that raises is logged and retried with exponential backoff (reset by a round that
  succeeds), never fatal;
- a task that dies anyway (cancelled by someone else, a bug outside the round) is logged and
  restarted, with the same backoff, up to `max_restarts` times in a row; past that it stays dead,
  and `health` says so (/readyz reads it), so it never stops silently;
- `stop(timeout)` ends the loop: the round under way gets `timeout` seconds, then is cancelled;
  a round that ignores even that is left behind, so a shutdown always ends.

Like the application layers' config, this imports nothing from the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("app.loops")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between retries: `initial`, doubled per failure in a row, at most `cap` seconds."""

    initial: float = 1.0
    cap: float = 30.0

    def delay(self, failures: int) -> float:
        """The wait after the `failures`-th failure in a row (1 is the first)."""
        return min(self.cap, self.initial * 2.0 ** max(0, min(failures - 1, 60)))


@dataclass(frozen=True, slots=True)
class LoopHealth:
    name: str
    # Its task is alive (between rounds, in one, or backing off after a failed round).
    running: bool
    # Dead: its task died more than `max_restarts` times in a row; it will not come back.
    dead: bool
    # Rounds failed in a row (0 after a round that succeeded).
    failures: int
    # Times its task died and was restarted since the last round that succeeded.
    restarts: int
    last_error: str | None

    @property
    def ok(self) -> bool:
        return self.running and not self.dead


class Loop:
    #: Seconds a round gets to end at stop() before it is cancelled.
    stop_timeout: float = 5.0
    #: Deaths of the task in a row (no round succeeding between) that are restarted.
    max_restarts: int = 5
    #: False: stop() cancels the round under way at once (then gives it `timeout` to unwind), for a
    #: round that may be long and is safe to cut short.
    finish_round_at_stop: bool = True

    def __init__(
        self,
        name: str,
        *,
        interval: float,
        backoff: Backoff | None = None,
        round_seconds: Callable[[float], Any] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        """`interval`: seconds between rounds when nothing wakes the loop. `round_seconds`: given
        each round's duration (a metric), failed rounds included."""
        self.name = name
        self.interval = interval
        self.backoff = backoff or Backoff()
        self._round_seconds = round_seconds
        self.log = logger or log
        self._wake_event = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._restart: asyncio.TimerHandle | None = None
        self._stopping = False
        self._dead = False
        self._failures = 0
        self._restarts = 0
        self._last_error: str | None = None

    # ---- what a subclass writes ---------------------------------------------------------------

    async def run_once(self) -> Any:
        """One round. Raising is allowed: the round is logged and retried with backoff."""
        raise NotImplementedError

    # ---- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        self._dead = False
        self._stop_event.clear()
        self._start_task()

    def wake(self) -> None:
        """Something changed: run a round now (after the one under way), not at the interval."""
        self._wake_event.set()

    async def stop(self, timeout: float | None = None) -> None:
        """End the loop: the round under way has `timeout` seconds (default `stop_timeout`) to end,
        then it is cancelled and given as long again to unwind. Idempotent."""
        timeout = self.stop_timeout if timeout is None else timeout
        self._stopping = True
        self._stop_event.set()
        self._wake_event.set()
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        task = self._task
        if task is None or task.done():
            return
        if self.finish_round_at_stop:
            await asyncio.wait({task}, timeout=timeout)
        if not task.done():
            task.cancel()
            # Bounded as well: a round that swallows its cancellation must not hold up a shutdown.
            await asyncio.wait({task}, timeout=max(timeout, 0.1))
        if not task.done():
            self.log.error("loop %s did not end within its stop timeout; left behind", self.name)

    @property
    def health(self) -> LoopHealth:
        task = self._task
        return LoopHealth(
            name=self.name,
            running=task is not None and not task.done(),
            dead=self._dead,
            failures=self._failures,
            restarts=self._restarts,
            last_error=self._last_error,
        )

    # ---- supervision --------------------------------------------------------------------------

    async def run(self) -> None:
        """Rounds until stop(): on the interval, or at once when woken; a failed round backs off."""
        while not self._stopping:
            # Cleared before the round: a wake during it runs the next one straight after.
            self._wake_event.clear()
            started = time.monotonic()
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one failed round is never fatal
                self._failures += 1
                self._last_error = f"{type(exc).__name__}: {exc}"[:500]
                delay = self.backoff.delay(self._failures)
                self.log.exception(
                    "loop %s: round failed (%d in a row); retrying in %.3g s",
                    self.name,
                    self._failures,
                    delay,
                )
                self._observe(started)
                # Only a stop cuts it short: a wake must not hammer whatever is failing.
                await self._sleep_unless_stopped(self._stop_event, delay)
                continue
            self._observe(started)
            self._failures = 0
            self._restarts = 0
            self._last_error = None
            await self._sleep_unless_stopped(self._wake_event, self.interval)

    def _observe(self, started: float) -> None:
        if self._round_seconds is not None:
            self._round_seconds(time.monotonic() - started)

    @staticmethod
    async def _sleep_unless_stopped(event: asyncio.Event, seconds: float) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
        # arrives as the event is set (a wake), and a cancelled loop must end.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()

    def _start_task(self) -> None:
        self._restart = None
        if self._stopping:
            return
        self._task = asyncio.create_task(self.run(), name=self.name)
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if self._stopping or task is not self._task:
            return
        # Not asked to stop, yet its task ended: whatever killed it, the loop must not just vanish.
        error = None if task.cancelled() else task.exception()
        self._last_error = "cancelled" if error is None else f"{type(error).__name__}: {error}"[:500]
        if self._restarts >= self.max_restarts:
            self._dead = True
            self.log.critical(
                "loop %s died %d times in a row (%s); it stays down: /readyz fails until a restart",
                self.name,
                self._restarts + 1,
                self._last_error,
                exc_info=error,
            )
            return
        self._restarts += 1
        delay = self.backoff.delay(self._restarts)
        self.log.error(
            "loop %s died (%s); restarting in %.3g s", self.name, self._last_error, delay, exc_info=error
        )
        self._restart = asyncio.get_running_loop().call_later(delay, self._start_task)
