"""The loop base (app/loops.py): rounds on wake or interval, failed rounds backed off, dead tasks
restarted or reported, and a stop that always ends. Timings are a few tens of milliseconds at most;
only lower bounds of measured gaps are asserted (a busy machine makes them longer, never shorter)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from app.loops import Backoff, Loop


class Counting(Loop):
    """Counts its rounds; the first `fail` of them raise; `hang` makes a round wait until released."""

    def __init__(self, *, interval: float = 3600.0, fail: int = 0, backoff: Backoff | None = None) -> None:
        super().__init__("counting", interval=interval, backoff=backoff or Backoff(0.01, 0.02))
        self.rounds: list[float] = []
        self.fail = fail
        self.hang = False
        self.release = asyncio.Event()
        self.finished = 0
        self.ran = asyncio.Event()

    async def run_once(self) -> None:
        self.rounds.append(time.monotonic())
        self.ran.set()
        if len(self.rounds) <= self.fail:
            raise RuntimeError(f"round {len(self.rounds)} broke")
        if self.hang:
            await self.release.wait()
        self.finished += 1

    async def next_round(self, timeout: float = 5.0) -> None:
        self.ran.clear()
        await asyncio.wait_for(self.ran.wait(), timeout)


async def wait_for(predicate, timeout: float = 5.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.005)


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(initial=0.5, cap=3.0)
    assert [backoff.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert backoff.delay(10_000) == 3.0


async def test_a_failing_round_is_logged_and_retried_with_backoff_until_one_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="app.loops")
    loop = Counting(fail=3, backoff=Backoff(0.01, 0.02))
    await loop.start()
    try:
        await wait_for(lambda: loop.finished == 1)
        assert loop.health.ok and loop.health.failures == 0 and loop.health.last_error is None
    finally:
        await loop.stop()
    gaps = [b - a for a, b in zip(loop.rounds, loop.rounds[1:], strict=False)]
    # Each retry waited its backoff: 0.01, then 0.02, then the cap (0.02).
    assert len(gaps) == 3
    assert all(gap >= want for gap, want in zip(gaps, (0.01, 0.02, 0.02), strict=True)), gaps
    failures = [r for r in caplog.records if "round failed" in r.getMessage()]
    assert len(failures) == 3 and all(r.exc_info for r in failures)
    assert "round 3 broke" in str(failures[-1].exc_info[1])


async def test_health_tells_of_rounds_failing_in_a_row() -> None:
    loop = Counting(fail=1000, backoff=Backoff(0.005, 0.005))
    await loop.start()
    try:
        await wait_for(lambda: loop.health.failures >= 3)
        health = loop.health
        # Still running: a failing round is retried, it does not kill the loop.
        assert health.running and health.ok and "broke" in (health.last_error or "")
    finally:
        await loop.stop()


async def test_wake_runs_a_round_now_instead_of_at_the_interval() -> None:
    loop = Counting(interval=3600.0)
    await loop.start()
    try:
        await wait_for(lambda: loop.finished == 1)
        for n in (2, 3):
            loop.wake()
            await wait_for(lambda n=n: loop.finished == n, timeout=2.0)
    finally:
        await loop.stop()


async def test_a_wake_during_a_round_runs_another_right_after_it() -> None:
    loop = Counting(interval=3600.0)
    loop.hang = True
    await loop.start()
    try:
        await wait_for(lambda: len(loop.rounds) == 1)
        loop.wake()  # something changed while the round was under way
        loop.hang = False
        loop.release.set()
        await wait_for(lambda: loop.finished == 2, timeout=2.0)
    finally:
        await loop.stop()


async def test_rounds_come_on_the_interval_without_a_wake() -> None:
    loop = Counting(interval=0.01)
    await loop.start()
    try:
        await wait_for(lambda: loop.finished >= 3)
    finally:
        await loop.stop()


async def test_stop_lets_the_round_under_way_finish() -> None:
    loop = Counting()
    loop.hang = True
    await loop.start()
    await wait_for(lambda: len(loop.rounds) == 1)
    asyncio.get_running_loop().call_later(0.02, loop.release.set)
    await loop.stop(timeout=5.0)
    assert loop.finished == 1 and not loop.health.running


async def test_stop_cancels_a_round_that_hangs_after_its_timeout() -> None:
    loop = Counting()
    loop.hang = True
    await loop.start()
    await wait_for(lambda: len(loop.rounds) == 1)
    started = time.monotonic()
    await loop.stop(timeout=0.05)
    assert time.monotonic() - started < 2.0
    assert loop.finished == 0 and not loop.health.running
    # Stopped for good: not taken for a death and restarted.
    await asyncio.sleep(0.05)
    assert len(loop.rounds) == 1 and not loop.health.running


async def test_stop_ends_even_when_a_round_ignores_its_cancellation(caplog: pytest.LogCaptureFixture) -> None:
    done = asyncio.Event()

    class Stubborn(Loop):
        async def run_once(self) -> None:
            while not done.is_set():
                try:
                    await asyncio.sleep(1)
                except asyncio.CancelledError:
                    pass  # the bug this guards against

    loop = Stubborn("stubborn", interval=3600.0)
    await loop.start()
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await loop.stop(timeout=0.05)
    assert time.monotonic() - started < 2.0
    assert any("did not end" in r.getMessage() for r in caplog.records)
    done.set()  # let the task left behind end, so the test leaves nothing running
    await wait_for(lambda: loop._task is not None and loop._task.done())


async def test_a_task_that_dies_is_restarted_and_health_shows_the_gap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="app.loops")
    loop = Counting(interval=3600.0, backoff=Backoff(0.05, 0.05))
    await loop.start()
    try:
        await wait_for(lambda: loop.finished == 1)
        assert loop._task is not None
        loop._task.cancel()  # killed from outside, as a bug elsewhere could
        await wait_for(lambda: not loop.health.running)
        assert not loop.health.ok and loop.health.restarts == 1
        await loop.next_round()  # restarted: it works again
        await wait_for(lambda: loop.finished == 2)
        assert loop.health.ok and loop.health.restarts == 0
    finally:
        await loop.stop()
    assert any("died" in r.getMessage() and "restarting" in r.getMessage() for r in caplog.records)


async def test_a_loop_that_keeps_dying_stays_down_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="app.loops")
    loop = Counting(interval=3600.0, backoff=Backoff(0.005, 0.005))
    loop.hang = True  # no round ever succeeds, so the deaths count in a row
    loop.max_restarts = 2
    await loop.start()
    try:
        for _ in range(3):
            await wait_for(lambda: loop.health.running)
            killed = loop._task
            assert killed is not None
            killed.cancel()
            # Restarted (a new task), or given up on.
            await wait_for(lambda killed=killed: loop._task is not killed or loop.health.dead)
        await asyncio.sleep(0.05)
        health = loop.health
        assert health.dead and not health.running and not health.ok
    finally:
        await loop.stop()
    assert any(r.levelno == logging.CRITICAL and "stays down" in r.getMessage() for r in caplog.records)
