"""A job past its time limit is interrupted on its backend and fails with type `timeout`."""

from __future__ import annotations

import asyncio

BLUR_WITH_LIMIT = {
    "description": "blur that must finish within a second",
    "workflow": {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "limited"}},
    },
    "params": {
        "color": {
            "type": "integer",
            "default": 0,
            "minimum": 0,
            "maximum": 16777215,
            "bind": ["1.inputs.color"],
        }
    },
    "timeout_seconds": 1,
}


async def test_hung_job_times_out_and_is_interrupted_by_prompt_id(gateway, emulator) -> None:  # noqa: ANN001
    assert (
        await gateway.http.put("/v1/templates/limited", json=BLUR_WITH_LIMIT, headers=gateway.admin)
    ).status_code == 201
    emulator.hang_next()
    job = (await gateway.generate({"template": "limited"})).json()
    running = await gateway.wait(job["id"], {"running"})
    final = await gateway.wait(job["id"], timeout=10)
    assert final["status"] == "failed" and final["error"]["type"] == "timeout"
    assert "1 s" in final["error"]["message"]
    async with gateway.state.sessionmaker() as session:
        from app.db.models import Job

        prompt_id = (await session.get(Job, job["id"])).prompt_id
    # Interrupted on the backend, targeted at that prompt only.
    assert {"prompt_id": prompt_id} in emulator.interrupts
    assert running["started_at"] is not None
    # The backend is free again: the next job runs normally.
    nxt = (await gateway.generate({"template": "limited", "params": {"color": 5}})).json()
    assert (await gateway.wait(nxt["id"]))["status"] == "succeeded"


async def test_backend_that_will_not_interrupt_is_marked_down(gateway, emulator) -> None:  # noqa: ANN001
    assert (
        await gateway.http.put("/v1/templates/limited", json=BLUR_WITH_LIMIT, headers=gateway.admin)
    ).status_code == 201
    emulator.hang_next()
    emulator.error_responses("/interrupt", status=500)
    job = (await gateway.generate({"template": "limited"})).json()
    final = await gateway.wait(job["id"], timeout=10)
    assert final["error"]["type"] == "timeout"
    await asyncio.sleep(0.3)
    assert gateway.dispatcher.backend_health() == {emulator.base_url: False}
    assert (await gateway.http.get("/readyz")).status_code == 503


async def test_a_per_job_limit_shortens_the_templates_and_is_bounded(gateway, emulator) -> None:  # noqa: ANN001
    too_long = await gateway.generate({"template": "blur", "timeout_seconds": 10**7})
    assert too_long.status_code == 422 and too_long.json()["errors"][0]["field"] == "timeout_seconds"
    assert (await gateway.generate({"template": "blur", "timeout_seconds": 0})).status_code == 422
    emulator.hang_next()
    job = (await gateway.generate({"template": "blur", "timeout_seconds": 0.5})).json()
    final = await gateway.wait(job["id"], timeout=10)
    assert final["status"] == "failed" and final["error"]["type"] == "timeout"
    assert "0.5 s" in final["error"]["message"]
