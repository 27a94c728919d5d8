"""One dispatcher round at a time, driven by hand: which jobs go to the backend, which are claimed
in reserve, and how a freed slot is refilled, with no loop and no clock (see dispatch_rig.py)."""

from __future__ import annotations

import pytest

from app.comfy.messages import Executing
from tests.integration.dispatch_rig import BLUR_PROMPT, USER, Rig, start_rig, submit

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
async def rig(emulator, make_settings, gateway_factory) -> Rig:  # noqa: ANN001
    return await start_rig(emulator, make_settings, gateway_factory)


async def test_a_round_fills_the_free_slots_fairly_and_claims_one_in_reserve(rig: Rig) -> None:
    _, alice = await rig.gw.create_user("alice", limits=USER)
    _, bob = await rig.gw.create_user("bob", limits=USER)
    a1, a2, a3 = [await submit(rig, alice) for _ in range(3)]
    b1 = await submit(rig, bob)
    await rig.connect()

    assert await rig.round() == 2
    # The backend's two slots: one job of each user (not alice's first two), in one POST each.
    sent = {rig.prompt_of(a1), rig.prompt_of(b1)}
    assert set(rig.emu.prompts_received) == sent and None not in sent
    # One more is claimed for this backend and held, to go the moment a slot frees.
    assert [item.job_id for item in rig.link.prepared] == [a2]
    assert rig.prompt_of(a2) not in rig.emu.prompts_received
    assert rig.prompt_of(a3) is None
    for job_id in (a1, a2, a3, b1):
        assert (await rig.job(job_id))["status"] == "queued"

    # Nothing is free: a second round sends nothing and claims nothing more.
    assert await rig.round() == 0
    assert rig.prompt_of(a3) is None


async def test_a_freed_slot_takes_the_reserve_and_a_new_one_is_claimed(rig: Rig) -> None:
    _, alice = await rig.gw.create_user("alice", limits=USER)
    a1, a2, a3, a4 = [await submit(rig, alice) for _ in range(4)]
    await rig.connect()
    assert await rig.round() == 2
    first = rig.prompt_of(a1)
    assert rig.emu.prompts_received == [first, rig.prompt_of(a2)]
    assert [item.job_id for item in rig.link.prepared] == [a3]

    # ComfyUI says it is done with a1 (after it stored the history entry): its slot frees at once
    # and its outputs are collected.
    await rig.emu.wait_idle()
    await rig.feed(Executing(node=None, prompt_id=first))
    assert first not in rig.link.slots
    done = await rig.job(a1)
    assert done["status"] == "succeeded" and len(done["outputs"]) == 1

    assert await rig.round() == 1
    assert rig.emu.prompts_received[-1] == rig.prompt_of(a3)
    assert [item.job_id for item in rig.link.prepared] == [a4]


async def test_a_job_no_backend_can_run_fails_in_the_round(rig: Rig) -> None:
    _, alice = await rig.gw.create_user("alice", limits=USER)
    # Submitted before the backend's node definitions are known, so the API cannot refuse it.
    odd = {**BLUR_PROMPT, "4": {"class_type": "NodeNobodyHas", "inputs": {"image": ["2", 0]}}}
    job_id = await submit(rig, alice, odd)
    await rig.connect()
    assert await rig.round() == 0
    job = await rig.job(job_id)
    assert job["status"] == "failed" and job["error"]["type"] == "unsupported_workflow", job
    assert "NodeNobodyHas" in str(job["error"])
    assert rig.emu.prompts_received == []


async def test_a_canceled_job_is_taken_off_its_backend_in_the_next_round(rig: Rig) -> None:
    _, alice = await rig.gw.create_user("alice", limits=USER)
    job_id = await submit(rig, alice)
    await rig.connect()
    assert await rig.round() == 1
    pid = rig.prompt_of(job_id)
    resp = await rig.gw.http.post(f"/v1/jobs/{job_id}/cancel", headers=rig.owner[job_id])
    assert resp.status_code == 200 and resp.json()["status"] == "canceled"
    assert rig.emu.interrupts == []  # the API does not talk to backends; the round does

    await rig.round()
    assert rig.emu.interrupts == [{"prompt_id": pid}]
    assert rig.link.job_of(pid) is None and pid not in rig.link.slots
    # Once: the cleanup is recorded.
    await rig.round()
    assert rig.emu.interrupts == [{"prompt_id": pid}]


async def test_a_round_that_sends_a_reserve_and_a_new_claim_sends_each_prompt_once(rig: Rig) -> None:
    _, alice = await rig.gw.create_user("alice", limits=USER)
    a1, a2, a3, a4, a5 = [await submit(rig, alice) for _ in range(5)]
    await rig.connect()
    assert await rig.round() == 2
    assert [item.job_id for item in rig.link.prepared] == [a3]
    first = [rig.prompt_of(j) for j in (a1, a2, a3)]
    # Both slots free at once: the next round sends the reserve into one, and a job it claims
    # into the other (and claims one more in reserve).
    await rig.emu.wait_idle()
    for prompt_id in first[:2]:
        await rig.feed(Executing(node=None, prompt_id=prompt_id))
    assert await rig.round() == 2
    await rig.emu.wait_idle()
    # Each once, in order: the reserve's send did not take the new claim along a second time.
    assert rig.emu.prompts_received == [*first, rig.prompt_of(a4)]
    assert [item.job_id for item in rig.link.prepared] == [a5]
