"""A loop round can fail only its own job: an unexpected exception while one job is prepared,
staged, submitted, tracked, collected or reconciled fails that job (`internal_error`, no exception
text) and frees its slot; other users' jobs still finish, on the same backend."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from app.comfy.client import ComfyClient
from app.comfy.messages import Executing
from app.dispatch import staging
from app.dispatch import tracker as tracker_module
from app.dispatch.placement import RoundPlan
from app.dispatch.tracker import Tracker
from tests.integration.conftest import Gateway
from tests.integration.test_uploads import png, upload

PLENTY = {"rate_per_minute": 100_000, "allow_raw_workflows": True}
TXT2IMG = {"template": "txt2img", "params": {"prompt": "a lighthouse", "steps": 3}}
SECRET = "boom: /srv/secret/path"


@pytest.fixture
async def one_slot(emulator, make_settings, gateway_factory) -> Gateway:  # noqa: ANN001
    """A gateway whose single backend holds one prompt at a time: a slot kept by a broken job
    would stall everyone."""
    gw = await gateway_factory(make_settings(comfyui_urls=[emulator.base_url], max_inflight_per_backend=1))
    await gw.wait_ready()
    return gw


def _flight_user(link: Any, pid: str | None) -> str | None:
    flight = link.job_of(pid)
    return flight.user_id if flight else None


def poison(stage: str, monkeypatch: pytest.MonkeyPatch, victim: str) -> None:
    """Make `stage` raise for the jobs of user `victim` only."""
    if stage == "prepare":
        route = RoundPlan.route

        def broken_route(self, job):  # noqa: ANN001, ANN202
            if job.user_id == victim:
                raise RuntimeError(SECRET)
            return route(self, job)

        monkeypatch.setattr(RoundPlan, "route", broken_route)
    elif stage == "staging":

        async def broken_stage(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
            raise RecursionError(SECRET)  # only the victim's job has inputs to stage

        monkeypatch.setattr(staging, "stage", broken_stage)
    elif stage == "submit":
        queue_prompt = ComfyClient.queue_prompt

        async def broken_queue_prompt(self, workflow, **kwargs):  # noqa: ANN001, ANN202
            if "poisoned" in str(workflow):
                raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, SECRET)
            return await queue_prompt(self, workflow, **kwargs)

        monkeypatch.setattr(ComfyClient, "queue_prompt", broken_queue_prompt)
    elif stage == "tracking":
        handle = Tracker.handle

        async def broken_handle(self, link, msg):  # noqa: ANN001, ANN202
            if (
                isinstance(msg, Executing)
                and msg.node is None
                and _flight_user(link, msg.prompt_id) == victim
            ):
                raise RuntimeError(SECRET)
            return await handle(self, link, msg)

        monkeypatch.setattr(Tracker, "handle", broken_handle)
    elif stage == "collect":
        collect = tracker_module.collect

        async def broken_collect(client, storage, job, entry, *rest):  # noqa: ANN001, ANN002, ANN202
            if job.user_id == victim:
                raise RuntimeError(SECRET)
            return await collect(client, storage, job, entry, *rest)

        monkeypatch.setattr(tracker_module, "collect", broken_collect)
    elif stage == "reconcile":
        # The victim's prompts are followed by reconciliation only (their messages are lost), and
        # applying their history raises there.
        handle, apply_history = Tracker.handle, Tracker.apply_history

        async def deaf_handle(self, link, msg):  # noqa: ANN001, ANN202
            if _flight_user(link, getattr(msg, "prompt_id", None)) == victim:
                return None
            return await handle(self, link, msg)

        async def broken_apply(self, link, pid, entry):  # noqa: ANN001, ANN202
            if _flight_user(link, pid) == victim:
                raise RuntimeError(SECRET)
            return await apply_history(self, link, pid, entry)

        monkeypatch.setattr(Tracker, "handle", deaf_handle)
        monkeypatch.setattr(Tracker, "apply_history", broken_apply)
    else:
        raise AssertionError(stage)


async def _taken(gw: Gateway, job_id: str, headers: dict[str, str]) -> None:
    """Until the dispatcher has handed the job to the backend (or ended it): Bob comes second."""
    deadline = time.monotonic() + 10
    while not any(f.job_id == job_id for link in gw.dispatcher.links for f in link.inflight.values()):
        if (await gw.job(job_id, headers))["status"] in ("failed", "succeeded"):
            return
        assert time.monotonic() < deadline, "the job was never dispatched"
        await asyncio.sleep(0.02)


async def _reconcile_after_it_ran(gw: Gateway, emulator: Any, victim: str) -> None:  # noqa: ANN401
    """Once the victim's prompt ran on the backend (its messages unheard), the socket drops: the
    reconnect makes the gateway reconcile."""
    deadline = time.monotonic() + 10
    while True:
        pids = [
            pid for link in gw.dispatcher.links for pid, f in link.inflight.items() if f.user_id == victim
        ]
        if pids and all(pid in emulator.executed_prompts for pid in pids):
            break
        assert time.monotonic() < deadline, "the victim's prompt never ran"
        await asyncio.sleep(0.02)
    emulator.drop_websockets()


@pytest.mark.parametrize("stage", ["prepare", "staging", "submit", "tracking", "collect", "reconcile"])
async def test_an_unexpected_error_fails_only_its_own_job_and_frees_its_slot(
    one_slot: Gateway,
    emulator,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    stage: str,  # noqa: ANN001
) -> None:
    gw = one_slot
    mallory_id, mallory = await gw.create_user("mallory", limits=PLENTY)
    _, bob = await gw.create_user("bob", limits=PLENTY)
    if stage == "staging":
        image = (await upload(gw, png(), mallory)).json()["id"]
        body = {"template": "img2img", "params": {"image": image, "prompt": "poisoned", "steps": 2}}
    else:
        body = {"template": "txt2img", "params": {"prompt": "poisoned", "steps": 3}}
    poison(stage, monkeypatch, mallory_id)

    bad = (await gw.generate(body, headers=mallory)).json()["id"]
    await _taken(gw, bad, mallory)
    good = (await gw.generate(TXT2IMG, headers=bob)).json()["id"]
    if stage == "reconcile":
        await _reconcile_after_it_ran(gw, emulator, mallory_id)

    # Bob's job takes the one slot the broken job held, and finishes.
    done = await gw.wait(good, headers=bob, timeout=15)
    assert done["status"] == "succeeded" and len(done["outputs"]) == 1
    failed = await gw.wait(bad, headers=mallory, timeout=15)
    assert failed["status"] == "failed", failed
    assert failed["error"]["type"] == "internal_error"
    # Generic: nothing of the exception reaches the user.
    assert "boom" not in str(failed["error"]) and "secret" not in str(failed["error"])
    # The operator's log has it, with the job's id and the traceback.
    assert any(bad in r.getMessage() and r.exc_info for r in caplog.records if r.name == "app.dispatch")

    # The fault gone, the same user's next job runs on the same backend.
    monkeypatch.undo()
    again = (await gw.generate(TXT2IMG, headers=mallory)).json()["id"]
    assert (await gw.wait(again, headers=mallory, timeout=15))["status"] == "succeeded"


async def test_an_output_comfyui_will_not_serve_fails_only_its_job_across_a_restart(
    emulator,
    make_settings,
    gateway_factory,  # noqa: ANN001
) -> None:
    """SaveImage with prefix `a..b` writes `a..b_00001_.png`, which ComfyUI's /view refuses (400, as
    it refuses any name with `..`). The job fails, and after a restart, reconciliation of that job
    no longer stops every round for every user."""
    settings = make_settings(comfyui_urls=[emulator.base_url], max_inflight_per_backend=1)
    first = await gateway_factory(settings)
    await first.wait_ready()
    _, mallory = await first.create_user("mallory", limits=PLENTY)
    _, bob = await first.create_user("bob", limits=PLENTY)
    workflow = (await first.http.get("/v1/templates/txt2img", headers=first.admin)).json()["workflow"]
    workflow["9"]["inputs"]["filename_prefix"] = "a..b"
    workflow["3"]["inputs"]["steps"] = 40
    workflow["5"]["inputs"].update(width=64, height=64)
    resp = await first.generate({"workflow": workflow}, headers=mallory)
    assert resp.status_code == 202, resp.text
    bad = resp.json()["id"]
    await first.wait(bad, {"running", "failed", "succeeded"}, headers=mallory)
    await first.close()  # most likely while it runs: it ends while no gateway is up
    await emulator.wait_idle()

    second = await gateway_factory(settings)
    await second.wait_ready()
    good = (await second.generate(TXT2IMG, headers=bob)).json()["id"]
    done = await second.wait(good, headers=bob, timeout=15)
    assert done["status"] == "succeeded", done
    failed = await second.wait(bad, headers=mallory, timeout=15)
    assert failed["status"] == "failed" and failed["error"]["type"] == "output_missing", failed
    again = (await second.generate(TXT2IMG, headers=mallory)).json()["id"]
    assert (await second.wait(again, headers=mallory, timeout=15))["status"] == "succeeded"


async def test_a_finished_jobs_progress_is_its_last_progress_event(gateway: Gateway, emulator) -> None:  # noqa: ANN001
    # Long enough for a progress write of the row mid-run (they are coalesced to one a second).
    emulator.config.step_seconds = 0.06
    job = (await gateway.generate({"template": "txt2img", "params": {"prompt": "steps", "steps": 20}})).json()
    events = await gateway.sse(job["id"])
    last = [e.data for e in events if e.event == "progress"][-1]
    assert last == {"value": 20, "max": 20, "node": "3"}
    final = await gateway.wait(job["id"])
    assert final["status"] == "succeeded"
    assert final["progress"] == last
    assert events[-1].data["progress"] == last
