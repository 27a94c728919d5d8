"""The backend pool through /v1/admin/backends: add at runtime, drain, remove, persistence across
restarts and replicas, and capabilities that follow a backend's model files."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import select

from app.db.models import GatewayState, Job
from comfy_emulator import Emulator

PROBLEM = "application/problem+json"


def slow_job(steps: int = 20, checkpoint: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"prompt": "x", "steps": steps}
    if checkpoint:
        params["checkpoint"] = checkpoint
    return {"template": "txt2img", "params": params}


async def rows(gw, job_ids: list[str]) -> dict[str, Job]:  # noqa: ANN001
    async with gw.state.sessionmaker() as session:
        found = (await session.execute(select(Job).where(Job.id.in_(job_ids)))).scalars()
        return {job.id: job for job in found}


def is_up(view: dict[str, Any]) -> bool:
    return view["health"]["status"] == "up" and view["capabilities"] is not None


async def test_admin_only_validated_and_conflicts_answered(idle_gateway) -> None:  # noqa: ANN001
    gw = await idle_gateway()
    _, user = await gw.create_user("plain")
    env_url = "http://127.0.0.1:9"

    assert (await gw.http.get("/v1/admin/backends")).status_code == 401
    for method, path, body in (
        ("GET", "/v1/admin/backends", None),
        ("POST", "/v1/admin/backends", {"url": "http://127.0.0.1:8189"}),
        ("POST", "/v1/admin/backends/x/drain", None),
        ("DELETE", "/v1/admin/backends/x", None),
    ):
        resp = await gw.http.request(method, path, json=body, headers=user)
        assert resp.status_code == 403, (method, path, resp.text)
        assert resp.headers["content-type"].startswith(PROBLEM)

    before = await gw.backends()
    assert (
        list(before) == [env_url]
        and before[env_url]["source"] == "env"
        and before[env_url]["state"] == "active"
    )
    # No dispatcher runs in this process: it asked the backend itself, which does not answer.
    assert before[env_url]["health"]["status"] == "down" and before[env_url]["capabilities"] is None

    for bad in (
        {"url": "ftp://127.0.0.1:8188"},
        {"url": "127.0.0.1:8188"},
        {"url": "http://"},
        {"url": "http://127.0.0.1:99999"},
        {"url": "http://user:secret@127.0.0.1:8188"},
        {"url": "http://127.0.0.1:8188/?x=1"},
        {"url": "http://127.0.0.1:8188/#top"},
        {"url": 8188},
        {},
        {"url": "http://127.0.0.1:8188", "extra": 1},
    ):
        resp = await gw.http.post("/v1/admin/backends", json=bad, headers=gw.admin)
        assert resp.status_code == 422, (bad, resp.text)
        assert resp.headers["content-type"].startswith(PROBLEM)
        assert any(
            e["field"].endswith("url") or e["field"].endswith("extra") or e["field"] == "body"
            for e in resp.json()["errors"]
        ), resp.json()
    assert await gw.backends() == before

    added = await gw.http.post("/v1/admin/backends", json={"url": "http://127.0.0.1:8189/"}, headers=gw.admin)
    assert added.status_code == 201, added.text
    new = added.json()
    assert new["url"] == "http://127.0.0.1:8189" and new["source"] == "admin" and new["state"] == "active"
    assert new["jobs"] == {"count": 0, "ids": []} and new["load"]["in_flight"] == 0

    duplicate = await gw.http.post(
        "/v1/admin/backends", json={"url": "http://127.0.0.1:8189"}, headers=gw.admin
    )
    assert duplicate.status_code == 409 and duplicate.json()["backend_id"] == new["id"]
    assert set(await gw.backends()) == {env_url, "http://127.0.0.1:8189"}
    # Paged newest first, like every list.
    page = (await gw.http.get("/v1/admin/backends", params={"limit": 1}, headers=gw.admin)).json()
    assert [b["url"] for b in page["items"]] == ["http://127.0.0.1:8189"] and page["next_cursor"]
    rest = (
        await gw.http.get("/v1/admin/backends", params={"cursor": page["next_cursor"]}, headers=gw.admin)
    ).json()
    assert [b["url"] for b in rest["items"]] == [env_url] and rest["next_cursor"] is None

    unknown = "00000000-0000-0000-0000-00000000dead"
    for method, path in (
        ("GET", f"/v1/admin/backends/{unknown}"),
        ("POST", f"/v1/admin/backends/{unknown}/drain"),
        ("POST", f"/v1/admin/backends/{unknown}/resume"),
        ("DELETE", f"/v1/admin/backends/{unknown}"),
    ):
        resp = await gw.http.request(method, path, headers=gw.admin)
        assert resp.status_code == 404, (method, path, resp.text)

    # Removing takes a drain first; an active backend stays.
    refused = await gw.http.delete(f"/v1/admin/backends/{new['id']}", headers=gw.admin)
    assert refused.status_code == 409 and "Drain" in refused.json()["detail"]
    drained = await gw.http.post(f"/v1/admin/backends/{new['id']}/drain", headers=gw.admin)
    assert drained.status_code == 200 and drained.json()["state"] == "draining"
    resumed = await gw.http.post(f"/v1/admin/backends/{new['id']}/resume", headers=gw.admin)
    assert resumed.json()["state"] == "active"
    await gw.http.post(f"/v1/admin/backends/{new['id']}/drain", headers=gw.admin)
    assert (await gw.http.delete(f"/v1/admin/backends/{new['id']}", headers=gw.admin)).status_code == 204
    assert list(await gw.backends()) == [env_url]
    assert (await gw.http.delete(f"/v1/admin/backends/{new['id']}", headers=gw.admin)).status_code == 404

    schema = (await gw.http.get("/openapi.json")).json()
    assert "/v1/admin/backends/{backend_id}/drain" in schema["paths"]
    assert (
        "opaque" in schema["components"]["schemas"]["BackendOut"]["properties"]["id"]["description"].lower()
    )


async def test_a_backend_added_at_runtime_gets_jobs(three_backends, make_settings, gateway_factory) -> None:  # noqa: ANN001
    first, second, _ = three_backends
    gw = await gateway_factory(make_settings(comfyui_urls=[first.base_url]))
    await gw.wait_ready()

    added = await gw.http.post("/v1/admin/backends", json={"url": second.base_url}, headers=gw.admin)
    assert added.status_code == 201, added.text
    view = await gw.wait_backend(second.base_url, is_up)
    assert view["capabilities"]["node_classes"] > 100
    assert "v1-5-pruned-emaonly.safetensors" in view["capabilities"]["models"]["checkpoints"]
    assert view["capabilities"]["models"]["loras"] == ["example_lora.safetensors"]
    assert view["capabilities"]["refreshed_at"] is not None and view["health"]["since"] is not None

    # With the first one drained, the new one does all the work.
    await gw.http.post(
        f"/v1/admin/backends/{(await gw.backends())[first.base_url]['id']}/drain", headers=gw.admin
    )
    ids = [(await gw.generate(slow_job(steps=2))).json()["id"] for _ in range(4)]
    finals = [await gw.wait(j) for j in ids]
    assert [f["status"] for f in finals] == ["succeeded"] * 4
    assert {job.backend for job in (await rows(gw, ids)).values()} == {second.base_url}
    assert first.prompts_received == [] and len(second.executed_prompts) == 4


async def test_drain_lets_jobs_in_flight_finish_there_and_sends_new_ones_elsewhere(
    three_backends,
    make_settings,
    gateway_factory,  # noqa: ANN001
) -> None:
    a, b, _ = three_backends
    gw = await gateway_factory(make_settings(comfyui_urls=[a.base_url, b.base_url]))
    await gw.wait_ready()
    a_id = (await gw.backends())[a.base_url]["id"]

    before = [(await gw.generate(slow_job())).json()["id"] for _ in range(6)]
    # Until a job is running on A.
    deadline = time.monotonic() + 20
    while not (
        running_on_a := [
            j for j in (await rows(gw, before)).values() if j.backend == a.base_url and j.status == "running"
        ]
    ):
        assert time.monotonic() < deadline, "no job ever ran on A"
        await asyncio.sleep(0.02)
    drained = await gw.http.post(f"/v1/admin/backends/{a_id}/drain", headers=gw.admin)
    assert drained.status_code == 200 and drained.json()["state"] == "draining"
    assert drained.json()["jobs"]["count"] >= 1, drained.json()
    held = {j.id: j.prompt_id for j in running_on_a}

    ready = await gw.http.get("/readyz", headers=gw.admin)
    assert ready.status_code == 200 and ready.json()["draining"] == [a.base_url], ready.text

    after = [(await gw.generate(slow_job(steps=2))).json()["id"] for _ in range(4)]
    finals = {j: await gw.wait(j, timeout=60) for j in before + after}
    assert all(f["status"] == "succeeded" for f in finals.values()), finals
    final_rows = await rows(gw, before + after)
    # What A was running when it was drained finished there, on its first attempt, not re-run.
    for job_id, prompt_id in held.items():
        assert (final_rows[job_id].backend, final_rows[job_id].prompt_id) == (a.base_url, prompt_id), finals[
            job_id
        ]
        assert final_rows[job_id].attempts == 1, finals[job_id]
    assert {final_rows[j].backend for j in after} == {b.base_url}, [finals[j] for j in after]
    # Nothing ran twice, and A ran only jobs it was given before the drain.
    diagnosis = (
        a.prompts_received,
        b.prompts_received,
        {j: (r.backend, r.prompt_id) for j, r in final_rows.items()},
    )
    assert len(a.executed_prompts) + len(b.executed_prompts) == len(before + after), diagnosis
    assert set(a.prompts_received) <= {final_rows[j].prompt_id for j in before}, diagnosis

    # With B drained too, no backend takes new jobs: not ready, though none is down.
    b_id = (await gw.backends())[b.base_url]["id"]
    await gw.http.post(f"/v1/admin/backends/{b_id}/drain", headers=gw.admin)
    not_ready = await gw.http.get("/readyz")
    assert not_ready.status_code == 503 and "draining" in not_ready.json()["detail"]
    assert all(v["health"]["status"] == "up" for v in (await gw.backends()).values())
    waiting = (await gw.generate(slow_job(steps=1))).json()["id"]
    resumed = await gw.http.post(f"/v1/admin/backends/{a_id}/resume", headers=gw.admin)
    assert resumed.json()["state"] == "active"
    assert (await gw.wait(waiting))["status"] == "succeeded"
    assert (await rows(gw, [waiting]))[waiting].backend == a.base_url
    assert (await gw.http.get("/readyz")).status_code == 200


async def test_remove_waits_for_jobs_then_stops_following_the_backend(
    three_backends, make_settings, gateway_factory
) -> None:  # noqa: ANN001
    a, b, _ = three_backends
    gw = await gateway_factory(make_settings(comfyui_urls=[a.base_url]))
    await gw.wait_ready()
    b_id = (await gw.http.post("/v1/admin/backends", json={"url": b.base_url}, headers=gw.admin)).json()["id"]
    await gw.wait_backend(b.base_url, is_up)
    a_id = (await gw.backends())[a.base_url]["id"]
    await gw.http.post(f"/v1/admin/backends/{a_id}/drain", headers=gw.admin)

    job = (await gw.generate(slow_job(steps=40))).json()["id"]
    await gw.wait(job, {"running"})
    await gw.http.post(f"/v1/admin/backends/{b_id}/drain", headers=gw.admin)
    busy = await gw.http.delete(f"/v1/admin/backends/{b_id}", headers=gw.admin)
    assert busy.status_code == 409 and busy.json()["jobs_in_flight"] == 1, busy.text
    assert b.base_url in await gw.backends()

    assert (await gw.wait(job, timeout=30))["status"] == "succeeded"
    link = next(link for link in gw.dispatcher.links if link.url == b.base_url)
    assert (await gw.http.delete(f"/v1/admin/backends/{b_id}", headers=gw.admin)).status_code == 204
    assert b.base_url not in await gw.backends()

    # The gateway lets go of it: its socket closes, and every task of it ends.
    deadline = time.monotonic() + 20
    while b.hub.connections or not all(task.done() for task in link.tasks):
        assert time.monotonic() < deadline, "the removed backend is still followed"
        await asyncio.sleep(0.05)
    assert b.base_url not in gw.dispatcher.backend_health()
    received = len(b.prompts_received)

    await gw.http.post(f"/v1/admin/backends/{a_id}/resume", headers=gw.admin)
    again = (await gw.generate(slow_job(steps=1))).json()["id"]
    assert (await gw.wait(again))["status"] == "succeeded"
    assert (await rows(gw, [again]))[again].backend == a.base_url and len(b.prompts_received) == received


async def test_an_added_backend_survives_a_restart_with_its_client_id(
    three_backends, make_settings, gateway_factory
) -> None:  # noqa: ANN001
    a, b, _ = three_backends
    settings = make_settings(comfyui_urls=[a.base_url])
    gw = await gateway_factory(settings)
    await gw.wait_ready()
    added = (await gw.http.post("/v1/admin/backends", json={"url": b.base_url}, headers=gw.admin)).json()
    await gw.wait_backend(b.base_url, is_up)
    async with gw.state.sessionmaker() as session:
        client_id = (await session.get(GatewayState, f"client_id:{b.base_url}")).value
    await gw.close()

    # The same settings: GATEWAY_COMFYUI_URLS does not name B, the database does.
    again = await gateway_factory(settings)
    view = await again.wait_backend(b.base_url, is_up)
    assert view["id"] == added["id"] and view["source"] == "admin" and view["added_at"] == added["added_at"]
    assert next(link for link in again.dispatcher.links if link.url == b.base_url).client_id == client_id
    assert b.hub.sockets.keys() == {client_id}

    await again.http.post(
        f"/v1/admin/backends/{(await again.backends())[a.base_url]['id']}/drain", headers=again.admin
    )
    job = (await again.generate(slow_job(steps=1))).json()["id"]
    assert (await again.wait(job))["status"] == "succeeded"
    assert (await rows(again, [job]))[job].backend == b.base_url


async def test_another_replica_follows_a_backend_added_through_this_one(
    three_backends, make_settings, gateway_factory, db_url: str
) -> None:  # noqa: ANN001
    a, b, _ = three_backends
    sqlite = db_url.startswith("sqlite")
    one = await gateway_factory(make_settings(comfyui_urls=[a.base_url]))
    # SQLite means one dispatching process; on PostgreSQL both dispatch and share the backends.
    two = await gateway_factory(make_settings(comfyui_urls=[a.base_url], run_dispatcher=not sqlite))
    await one.wait_ready()
    assert (
        await one.http.post("/v1/admin/backends", json={"url": b.base_url}, headers=one.admin)
    ).status_code == 201
    # Exactly one replica follows it: one socket, with the backend's one client id.
    dispatching = [one] if sqlite else [one, two]
    deadline = time.monotonic() + 20
    while (
        len(owners := [g for g in dispatching if b.base_url in {link.url for link in g.dispatcher.links}])
        != 1
    ):
        assert time.monotonic() < deadline, "no replica (or two) follows the new backend"
        await asyncio.sleep(0.05)
    [owner] = owners
    other = two if owner is one else one
    # Replica two learns of it from the table; it reads the backend's node definitions itself
    # when it follows it, or probes it (SQLite: not dispatching). A dispatching replica that does
    # not follow it knows its health from the lease only.
    knows_all = sqlite or owner is two
    view = await two.wait_backend(b.base_url, is_up if knows_all else lambda v: v["health"]["status"] == "up")
    assert view["source"] == "admin"
    while len(b.hub.connections) != 1:
        assert time.monotonic() < deadline, "the new backend never got its one socket"
        await asyncio.sleep(0.05)

    # A drain through the replica that does not follow it stops the owner sending there.
    await other.http.post(f"/v1/admin/backends/{view['id']}/drain", headers=other.admin)
    deadline = time.monotonic() + 20
    while not next(link for link in owner.dispatcher.links if link.url == b.base_url).draining:
        assert time.monotonic() < deadline, "the owner never saw the drain"
        await asyncio.sleep(0.05)
    assert len(b.hub.connections) == 1


async def test_a_model_file_added_to_a_running_backend_becomes_routable(
    emulator: Emulator, make_settings, gateway_factory
) -> None:  # noqa: ANN001
    gw = await gateway_factory(
        make_settings(comfyui_urls=[emulator.base_url], object_info_refresh_seconds=0.5)
    )
    await gw.wait_ready()
    refused = (await gw.generate(slow_job(steps=1, checkpoint="late.safetensors"))).json()["id"]
    failed = await gw.wait(refused)
    assert failed["status"] == "failed" and failed["error"]["type"] == "unsupported_workflow"
    assert "late.safetensors" in failed["error"]["message"]

    # Copied into the running server: no reconnect, no restart; the timer reads it.
    emulator.set_models("checkpoints", ["v1-5-pruned-emaonly.safetensors", "late.safetensors"])
    await gw.wait_backend(
        emulator.base_url, lambda v: "late.safetensors" in v["capabilities"]["models"]["checkpoints"]
    )
    job = (await gw.generate(slow_job(steps=1, checkpoint="late.safetensors"))).json()["id"]
    assert (await gw.wait(job))["status"] == "succeeded"


async def test_a_reconnect_reads_the_model_files_again(
    emulator: Emulator, make_settings, gateway_factory
) -> None:  # noqa: ANN001
    gw = await gateway_factory(make_settings(comfyui_urls=[emulator.base_url]))  # the timer: 300 s
    await gw.wait_ready()
    first = (await gw.backends())[emulator.base_url]["capabilities"]["refreshed_at"]
    emulator.set_models("checkpoints", ["late.safetensors"])
    emulator.drop_websockets()
    view = await gw.wait_backend(
        emulator.base_url, lambda v: v["capabilities"]["refreshed_at"] != first and is_up(v)
    )
    assert view["capabilities"]["models"]["checkpoints"] == ["late.safetensors"]
    job = (await gw.generate(slow_job(steps=1, checkpoint="late.safetensors"))).json()["id"]
    assert (await gw.wait(job))["status"] == "succeeded"


async def test_a_backend_dropped_from_the_setting_leaves_the_pool_without_its_jobs_lost(
    three_backends,
    make_settings,
    gateway_factory,  # noqa: ANN001
) -> None:
    a, b, _ = three_backends
    gw = await gateway_factory(make_settings(comfyui_urls=[b.base_url]))
    await gw.wait_ready()
    job = (await gw.generate(slow_job(steps=40))).json()["id"]
    await gw.wait(job, {"running"})
    await gw.close()

    # B is no longer configured, but holds a job: it stays, drained, until that job is done.
    second = await gateway_factory(make_settings(comfyui_urls=[a.base_url]))
    views = await second.backends()
    assert views[b.base_url]["state"] == "draining" and views[b.base_url]["source"] == "env"
    final = await second.wait(job, timeout=30)
    assert final["status"] == "succeeded" and b.executed_prompts == [
        (await rows(second, [job]))[job].prompt_id
    ]
    await second.close()

    # An API-only process configured otherwise registers its URL but takes nothing out.
    api_only = await gateway_factory(make_settings(comfyui_urls=["http://127.0.0.1:9"], run_dispatcher=False))
    assert set(await api_only.backends()) == {a.base_url, b.base_url, "http://127.0.0.1:9"}
    await api_only.close()

    third = await gateway_factory(make_settings(comfyui_urls=[a.base_url]))
    assert list(await third.backends()) == [a.base_url]
