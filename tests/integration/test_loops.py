"""The gateway's loops under faults, as an operator and users see them: a failing round is logged and
retried with backoff while the API serves; a loop killed from outside is restarted and /readyz says
so meanwhile; one that keeps dying stays down and /readyz fails (not /healthz)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from app.loops import Backoff
from tests.integration.conftest import Gateway

BLUR = {"template": "blur", "params": {"width": 16, "height": 16}}


async def until(predicate, timeout: float = 10) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.02)


async def test_a_failing_dispatcher_round_is_retried_with_backoff_and_work_resumes(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="app.dispatch")
    await gateway.wait_ready()

    async def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("the scheduler broke")

    monkeypatch.setattr(gateway.dispatcher.scheduler, "pick", broken)
    job = (await gateway.generate(BLUR)).json()["id"]

    def failures() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "dispatcher: round failed" in r.getMessage()]

    await until(lambda: len(failures()) >= 4)
    times = [r.created for r in failures()]
    # Backed off (GATEWAY_DISPATCH_POLL_SECONDS 0.2 doubled per failure), not retried in a tight loop,
    # and each one logged with its traceback.
    for gap, least in zip(
        [b - a for a, b in zip(times, times[1:], strict=False)], (0.2, 0.4, 0.8), strict=False
    ):
        assert gap >= least * 0.9, times
    assert all(r.exc_info for r in failures())
    # Meanwhile the API serves, the job waits, and the loop is not taken for dead.
    assert (await gateway.job(job))["status"] == "queued"
    assert (await gateway.http.get("/readyz")).status_code == 200

    monkeypatch.undo()
    final = await gateway.wait(job, timeout=15)
    assert final["status"] == "succeeded"


async def test_a_dispatcher_killed_from_outside_is_restarted_and_readyz_says_so_meanwhile(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="app.dispatch")
    await gateway.wait_ready()
    dispatcher = gateway.dispatcher
    # Long enough to see the gap from here; the default is GATEWAY_DISPATCH_POLL_SECONDS.
    dispatcher.backoff = Backoff(initial=2.0, cap=2.0)
    killed = dispatcher._task
    assert killed is not None
    killed.cancel()  # as a bug elsewhere could
    for _ in range(200):  # the cancellation lands at the task's next await
        if killed.done():
            break
        await asyncio.sleep(0.01)
    assert killed.cancelled()

    down = await gateway.http.get("/readyz")
    assert down.status_code == 503
    assert down.headers["content-type"].startswith("application/problem+json")
    assert "background loops not running: dispatcher" in down.json()["detail"]
    assert (await gateway.http.get("/healthz")).status_code == 200

    # Restarted on its own: a job submitted now runs, and the gateway is ready again.
    job = (await gateway.generate(BLUR)).json()["id"]
    assert (await gateway.wait(job, timeout=15))["status"] == "succeeded"
    assert (await gateway.http.get("/readyz")).status_code == 200
    assert any("loop dispatcher died" in r.getMessage() for r in caplog.records)


async def test_a_loop_that_keeps_dying_stays_down_and_readyz_fails(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    await gateway.wait_ready()
    (gauges,) = [loop for loop in gateway.state.loops if loop.name == "job gauges"]
    gauges.max_restarts = 0  # the next death is one too many
    assert gauges._task is not None
    gauges._task.cancel()
    await until(lambda: gauges.health.dead)

    for _ in range(2):  # it stays so: nothing restarts it
        resp = await gateway.http.get("/readyz")
        assert resp.status_code == 503
        assert "background loops not running: job gauges" in resp.json()["detail"]
        await asyncio.sleep(0.1)
    assert (await gateway.http.get("/healthz")).status_code == 200
    assert any(r.levelno == logging.CRITICAL and "job gauges" in r.getMessage() for r in caplog.records)
    # The other loops are unaffected: jobs still run.
    job = (await gateway.generate(BLUR)).json()["id"]
    assert (await gateway.wait(job, timeout=15))["status"] == "succeeded"
