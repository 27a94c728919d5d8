"""Jobs survive a gateway restart: the rows are the truth, in-flight prompts are reconciled."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import select

from app.db.models import Job


async def test_restart_with_jobs_queued_and_in_flight_finishes_each_once(
    emulator,
    make_settings,
    gateway_factory,  # noqa: ANN001
) -> None:
    settings = make_settings(comfyui_urls=[emulator.base_url])
    first = await gateway_factory(settings)
    body = {"template": "txt2img", "params": {"prompt": "survive", "steps": 25}}  # 25 × 10 ms per job
    ids = [(await first.generate(body)).json()["id"] for _ in range(5)]
    await first.wait(ids[0], {"running"})
    await first.close()  # the gateway goes away with one prompt running and one queued in ComfyUI

    second = await gateway_factory(settings)
    finals = [await second.wait(job_id, timeout=30) for job_id in ids]
    assert [j["status"] for j in finals] == ["succeeded"] * 5
    assert all(len(j["outputs"]) == 1 for j in finals)
    # None ran twice: one prompt per job, each executed once by ComfyUI.
    async with second.state.sessionmaker() as session:
        prompt_ids = list((await session.execute(select(Job.prompt_id).where(Job.id.in_(ids)))).scalars())
    assert len(set(prompt_ids)) == 5
    executed = Counter(emulator.executed_prompts)
    assert all(executed[p] == 1 for p in prompt_ids), executed
    assert all(j["attempts"] == 1 for j in finals)
    # Every output file is really in storage.
    for job in finals:
        resp = await second.http.get(job["outputs"][0]["url"])
        assert resp.status_code == 200


async def test_range_requests_on_outputs(gateway) -> None:  # noqa: ANN001
    job = (await gateway.generate({"template": "blur", "params": {"width": 32, "height": 32}})).json()
    out = (await gateway.wait(job["id"]))["outputs"][0]
    full = (await gateway.http.get(out["url"])).content
    part = await gateway.http.get(out["url"], headers={"Range": "bytes=0-7"})
    assert part.status_code == 206 and part.content == full[:8] == b"\x89PNG\r\n\x1a\n"
    beyond = await gateway.http.get(out["url"], headers={"Range": f"bytes={len(full) + 10}-"})
    assert beyond.status_code == 416
    assert "filename" in (await gateway.http.get(out["url"])).headers["content-disposition"]


async def test_a_deleted_built_in_template_stays_deleted_across_restarts(
    emulator,
    make_settings,
    gateway_factory,  # noqa: ANN001
) -> None:
    settings = make_settings(comfyui_urls=[emulator.base_url])
    first = await gateway_factory(settings)
    blur = (await first.http.get("/v1/templates/blur", headers=first.admin)).json()
    assert (await first.http.delete("/v1/templates/blur", headers=first.admin)).status_code == 204
    await first.close()

    second = await gateway_factory(settings)
    assert (await second.http.get("/v1/templates/blur", headers=second.admin)).status_code == 404
    assert (await second.generate({"template": "blur"})).status_code == 422
    # Registered again by the operator, it is theirs: kept across the next restart.
    doc = {
        "description": blur["description"],
        "workflow": blur["workflow"],
        "params": {},
        "outputs": blur["outputs"],
    }
    assert (await second.http.put("/v1/templates/blur", json=doc, headers=second.admin)).status_code == 201
    await second.close()

    third = await gateway_factory(settings)
    again = await third.http.get("/v1/templates/blur", headers=third.admin)
    assert again.status_code == 200 and again.json()["params_schema"]["properties"] == {}
    # The other built-ins are untouched.
    assert (await third.http.get("/v1/templates/txt2img", headers=third.admin)).status_code == 200
