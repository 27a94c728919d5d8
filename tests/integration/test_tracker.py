"""The tracker, fed the WebSocket messages a real ComfyUI sent (tests/data/recordings), one at a time,
about a job the dispatcher really sent: the job's transitions and the backend's state after each
(see dispatch_rig.py; no socket is read and nothing is timed)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import replace

import httpx
import pytest

from app.comfy.messages import (
    Executed,
    Executing,
    ExecutionCached,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionStart,
    ExecutionSuccess,
    Preview,
    Progress,
    Status,
    Unknown,
)
from app.comfy.websocket import Connected, Disconnected
from tests.integration.dispatch_rig import USER, Rig, recorded, start_rig, submit

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
async def rig(emulator, make_settings, gateway_factory) -> Rig:  # noqa: ANN001
    return await start_rig(emulator, make_settings, gateway_factory)


async def dispatched(rig: Rig) -> tuple[str, str]:
    """A job sent to the backend by a round: its id and prompt id."""
    _, alice = await rig.gw.create_user("alice", limits=USER)
    job_id = await submit(rig, alice)
    await rig.connect()
    assert await rig.round() == 1
    pid = rig.prompt_of(job_id)
    assert pid is not None and pid in rig.link.slots
    return job_id, pid


def first(messages: list[object], kind: type) -> int:
    return next(i for i, m in enumerate(messages) if isinstance(m, kind))


async def test_a_recorded_run_takes_the_job_to_running_then_succeeded(rig: Rig) -> None:
    job_id, pid = await dispatched(rig)
    messages = recorded("scenario_basic_blur", pid)
    start, success = first(messages, ExecutionStart), first(messages, ExecutionSuccess)

    await rig.feed(*messages[:start])  # the queue's status: nothing happens to the job
    assert rig.link.queue_remaining == 1 and (await rig.job(job_id))["status"] == "queued"

    await rig.feed(messages[start])
    job = await rig.job(job_id)
    assert job["status"] == "running" and job["started_at"] is not None

    await rig.feed(*messages[start + 1 : success])  # the nodes run
    flight = rig.link.job_of(pid)
    assert flight is not None and flight.current_node == "3" and flight.nodes_done == {"1", "2"}

    await rig.feed(messages[success])
    assert flight.succeeded and (await rig.job(job_id))["status"] == "running"  # outputs not yet taken

    # The history entry and the file are on the backend before `executing: null` comes.
    await rig.emu.wait_idle()
    await rig.feed(*messages[success + 1 :])
    job = await rig.job(job_id)
    assert job["status"] == "succeeded" and len(job["outputs"]) == 1, job
    assert pid not in rig.link.slots and rig.link.job_of(pid) is None
    image = await rig.gw.http.get(job["outputs"][0]["url"])
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")


async def test_recorded_progress_is_written_to_the_job(rig: Rig) -> None:
    job_id, pid = await dispatched(rig)
    messages = recorded("scenario_slow_job", pid)
    await rig.feed(*messages[: first(messages, Progress)])
    seen = []
    for message in messages[first(messages, Progress) : first(messages, ExecutionSuccess)]:
        await rig.feed(message)
        if isinstance(message, Progress):
            progress = (await rig.job(job_id))["progress"]
            seen.append((progress["value"], progress["max"]))
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    assert (await rig.job(job_id))["status"] == "running"


async def test_nodes_served_from_the_cache_count_as_done(rig: Rig) -> None:
    job_id, pid = await dispatched(rig)
    # The second prompt of the recording is served from the cache entirely.
    messages = recorded("scenario_cached_second_prompt", pid, index=1)
    ours = [m for m in messages if getattr(m, "prompt_id", pid) == pid]
    await rig.feed(*ours[: first(ours, ExecutionCached) + 1])
    flight = rig.link.job_of(pid)
    assert flight is not None and flight.nodes_done == {"1", "2", "3"} and flight.current_node is None
    await rig.emu.wait_idle()
    await rig.feed(*await rig.as_written(ours[first(ours, ExecutionCached) + 1 :], pid))
    assert (await rig.job(job_id))["status"] == "succeeded"


async def test_a_run_heard_whole_takes_its_outputs_from_its_messages_without_asking_history(rig: Rig) -> None:
    job_id, pid = await dispatched(rig)
    await rig.emu.wait_idle()
    messages = await rig.as_written(recorded("scenario_basic_blur", pid), pid)
    # The backend has no history of the prompt now: only its messages can tell its outputs.
    async with httpx.AsyncClient(base_url=rig.emu.base_url) as http:
        resp = await http.post("/history", json={"delete": [pid]})
    assert resp.status_code == 200 and await rig.link.client.get_history(pid) is None
    await rig.feed(*messages)
    job = await rig.job(job_id)
    assert job["status"] == "succeeded" and len(job["outputs"]) == 1, job
    image = await rig.gw.http.get(job["outputs"][0]["url"])
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "lost",
    [
        lambda pid: [Disconnected(reason="connection lost"), Connected(sid="again", attempt=1)],
        lambda pid: [Unknown(type="executed", data={"node": 3})],
        # A node from the cache: ComfyUI versions of mid-2024 announced no `executed` for it.
        lambda pid: [ExecutionCached(prompt_id=pid, nodes=["1"])],
    ],
    ids=["socket dropped", "unreadable output", "node from the cache"],
)
async def test_a_run_whose_messages_may_be_incomplete_takes_its_outputs_from_history(
    rig: Rig, lost: Callable[[str], list[object]]
) -> None:
    job_id, pid = await dispatched(rig)
    await rig.emu.wait_idle()
    messages = recorded("scenario_basic_blur", pid)
    start = first(messages, ExecutionStart)
    # Outputs that do not exist: taken from these messages, the job would fail as output_missing.
    named = [
        replace(m, output={"images": [{"filename": "never_written.png", "subfolder": "", "type": "output"}]})
        if isinstance(m, Executed)
        else m
        for m in messages
    ]
    await rig.feed(*named[: start + 1], *lost(pid), *named[start + 1 :])
    job = await rig.job(job_id)
    assert job["status"] == "succeeded" and len(job["outputs"]) == 1, job
    assert job["outputs"][0]["filename"] != "never_written.png"


async def test_previews_and_node_starts_reach_the_jobs_live_subscribers(rig: Rig) -> None:
    job_id, pid = await dispatched(rig)
    bus = rig.gw.app.state.gateway.bus
    sub = bus.subscribe_job(job_id, previews=True)
    # A client that announced preview metadata: previews come as event 4, saying whose they are.
    messages = recorded("scenario_previews_feature_flags_client", pid)
    await rig.feed(*messages[: first(messages, ExecutionSuccess)])
    # A legacy client's previews (event 1) do not say whose they are: they are dropped.
    await rig.feed(*(m for m in recorded("scenario_previews_legacy_client", pid) if isinstance(m, Preview)))
    events = []
    while not sub.queue.empty():
        events.append(sub.queue.get_nowait())
    bus.unsubscribe(sub)
    previews = [e.data for e in events if e.event == "preview"]
    assert [(p["content_type"], p["node"]) for p in previews] == [("image/jpeg", "2")] * 3
    assert all(base64.b64decode(p["image"]).startswith(b"\xff\xd8\xff") for p in previews)
    starts = [e.data["current_node"] for e in events if e.event == "progress" and e.data.get("node_start")]
    assert starts == ["1", "2", "3"]


async def test_a_recorded_execution_error_fails_the_job_and_frees_its_slot_at_once(rig: Rig) -> None:
    job_id, pid = await dispatched(rig)
    messages = recorded("scenario_failing_job", pid)
    error_at = first(messages, ExecutionError)
    await rig.feed(*messages[:error_at])
    # The slot is free the moment the message is read, before the failure is written.
    await rig.feed(messages[error_at], settle=False)
    assert pid not in rig.link.slots and (await rig.job(job_id))["status"] == "running"
    await rig.settle()
    job = await rig.job(job_id)
    assert job["status"] == "failed"
    assert {k: job["error"][k] for k in ("type", "node_id", "node_type")} == {
        "type": "execution_error",
        "node_id": "2",
        "node_type": "HarnessFail",
    }
    assert "harness failure" in job["error"]["message"]
    # What follows (`status`, `executing: null`) changes nothing: the outcome is recorded.
    await rig.feed(*messages[error_at + 1 :])
    assert (await rig.job(job_id))["error"] == job["error"] and rig.link.job_of(pid) is None


async def test_a_recorded_interruption_fails_the_job(rig: Rig) -> None:
    job_id, pid = await dispatched(rig)
    messages = recorded("scenario_interrupted_job", pid)
    interrupted_at = first(messages, ExecutionInterrupted)
    await rig.feed(*messages[:interrupted_at])
    await rig.feed(messages[interrupted_at], settle=False)
    assert pid not in rig.link.slots
    await rig.settle()
    job = await rig.job(job_id)
    assert job["status"] == "failed" and job["error"]["type"] == "interrupted"
    assert pid not in rig.link.slots and rig.link.job_of(pid) is None


async def test_the_interruption_of_a_canceled_job_leaves_it_canceled(rig: Rig) -> None:
    job_id, pid = await dispatched(rig)
    messages = recorded("scenario_interrupted_job", pid)
    await rig.feed(*messages[: first(messages, ExecutionStart) + 1])
    resp = await rig.gw.http.post(f"/v1/jobs/{job_id}/cancel", headers=rig.owner[job_id])
    assert resp.status_code == 200 and resp.json()["status"] == "canceled"
    await rig.feed(*messages[first(messages, ExecutionStart) + 1 :])
    job = await rig.job(job_id)
    assert job["status"] == "canceled" and job["error"] is None
    assert rig.link.job_of(pid) is None
    # Its cleanup is done: the next round does not ask the backend to stop it again.
    await rig.round()
    assert rig.emu.interrupts == []


async def test_messages_about_other_prompts_change_nothing(rig: Rig) -> None:
    """Another client's prompts on the same ComfyUI (the recording's own ids)."""
    job_id, pid = await dispatched(rig)
    others = [m for m in recorded("scenario_basic_blur", None) if not isinstance(m, Status)]
    await rig.feed(*others)
    flight = rig.link.job_of(pid)
    assert flight is not None and flight.current_node is None and not flight.succeeded
    assert pid in rig.link.slots and (await rig.job(job_id))["status"] == "queued"
    # And `executing` with a node but no prompt id (sent on reconnect) is not taken for ours.
    await rig.feed(Executing(prompt_id=None, node="2"))
    assert flight.current_node is None


async def test_the_socket_coming_and_going_and_the_queue_size(rig: Rig) -> None:
    await rig.connect()
    link = rig.link
    assert link.connected and link.needs_reconcile  # messages may have been missed: checked next round
    await rig.feed(Status(queue_remaining=3))
    assert link.queue_remaining == 3

    # Only the socket dropped: the health check made at once finds the backend answering.
    await rig.feed(Disconnected(reason="closed by server: code 1006"))
    assert not link.connected and link.last_error == "closed by server: code 1006"
    assert link.healthy and link.down_since is None

    # The backend is gone: the same message now finds it down.
    await rig.emu.kill()
    await rig.feed(Disconnected(reason="connection refused"))
    assert not link.healthy and link.down_since is not None and link.check_failures == 1
