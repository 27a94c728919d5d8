"""A backend that dies mid-job: its jobs run elsewhere, each exactly once to completion."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from app.db.models import Job, Output


async def test_killing_a_backend_with_jobs_in_flight_loses_none(
    three_backends, make_settings, gateway_factory
) -> None:  # noqa: ANN001
    victim = three_backends[0]
    gw = await gateway_factory(
        make_settings(comfyui_urls=[e.base_url for e in three_backends], failover_grace_seconds=1.0)
    )
    await gw.wait_ready()
    job = {"template": "txt2img", "params": {"prompt": "x", "steps": 8}}  # about 250 ms each
    ids = [r.json()["id"] for r in await asyncio.gather(*(gw.generate(job) for _ in range(30)))]
    # Wait until the victim is busy, then kill it: its running and queued prompts are lost.
    while not victim.prompts_received:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    await victim.kill()

    finals = [await gw.wait(j, timeout=60) for j in ids]
    assert [f["status"] for f in finals] == ["succeeded"] * 30
    assert all(len(f["outputs"]) == 1 for f in finals)  # exactly one set of outputs each
    async with gw.state.sessionmaker() as session:
        rows = (await session.execute(select(Job).where(Job.id.in_(ids)))).scalars().all()
        outputs = (await session.execute(select(Output.job_id).where(Output.job_id.in_(ids)))).scalars().all()
    assert sorted(outputs) == sorted(ids)
    moved = [r for r in rows if r.attempts > 1]
    assert moved, "the victim had jobs in flight; they must have moved"
    assert all(r.backend != victim.base_url for r in moved)  # they finished elsewhere
    assert all(r.attempts <= 2 for r in rows)
