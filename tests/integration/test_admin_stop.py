"""The admin stop switch: an admin cancels or deletes any user's job, whatever it does to a backend."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from app.db.models import JobEvent
from tests.integration.conftest import Gateway

PLENTY = {"rate_per_minute": 100_000}
TXT2IMG = {"template": "txt2img", "params": {"prompt": "a lighthouse", "steps": 3}}


@pytest.fixture
async def one_slot(emulator, make_settings, gateway_factory) -> Gateway:  # noqa: ANN001
    """One backend, one prompt at a time: a prompt left on it would hold up every later job."""
    gw = await gateway_factory(make_settings(comfyui_urls=[emulator.base_url], max_inflight_per_backend=1))
    await gw.wait_ready()
    return gw


async def event_count(gw: Gateway, job_id: str) -> int:
    async with gw.state.sessionmaker() as session:
        return (
            await session.execute(select(func.count()).select_from(JobEvent).where(JobEvent.job_id == job_id))
        ).scalar_one()


async def test_an_admin_cancels_any_users_running_job(one_slot: Gateway, emulator) -> None:  # noqa: ANN001
    gw = one_slot
    _, bob = await gw.create_user("bob", limits=PLENTY)
    _, ops = await gw.create_user("ops", is_admin=True, limits=PLENTY)
    emulator.hang_next()  # runs until it is interrupted
    stuck = (await gw.generate(TXT2IMG, headers=bob)).json()["id"]
    await gw.wait(stuck, {"running"}, headers=bob)

    assert (await gw.http.post(f"/v1/admin/jobs/{stuck}/cancel", headers=bob)).status_code == 403
    missing = await gw.http.post(f"/v1/admin/jobs/{uuid.uuid4()}/cancel", headers=ops)
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"

    resp = await gw.http.post(f"/v1/admin/jobs/{stuck}/cancel", headers=ops)
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "canceled" and resp.json()["user_id"] != ops
    assert (await gw.job(stuck, headers=bob))["status"] == "canceled"
    again = await gw.http.post(f"/v1/admin/jobs/{stuck}/cancel", headers=ops)
    assert again.status_code == 409 and again.json()["job"]["status"] == "canceled"

    # It was interrupted on the backend: the one slot serves the next job.
    after = (await gw.generate(TXT2IMG, headers=bob)).json()["id"]
    assert (await gw.wait(after, headers=bob, timeout=15))["status"] == "succeeded"


async def test_an_admin_deletes_any_users_job_running_or_finished(one_slot: Gateway, emulator) -> None:  # noqa: ANN001
    gw = one_slot
    _, bob = await gw.create_user("bob", limits=PLENTY)
    done = (await gw.generate(TXT2IMG, headers=bob)).json()["id"]
    finished = await gw.wait(done, headers=bob)
    url = finished["outputs"][0]["url"]
    assert (await gw.http.get(url)).status_code == 200
    emulator.hang_next()
    stuck = (await gw.generate(TXT2IMG, headers=bob)).json()["id"]
    await gw.wait(stuck, {"running"}, headers=bob)

    assert (await gw.http.delete(f"/v1/admin/jobs/{stuck}", headers=bob)).status_code == 403
    assert (await gw.http.delete(f"/v1/admin/jobs/{uuid.uuid4()}", headers=gw.admin)).status_code == 404

    for job_id in (stuck, done):
        assert await event_count(gw, job_id) > 0
        resp = await gw.http.delete(f"/v1/admin/jobs/{job_id}", headers=gw.admin)
        assert resp.status_code == 204, resp.text
        assert (await gw.http.get(f"/v1/jobs/{job_id}", headers=bob)).status_code == 404
        assert await event_count(gw, job_id) == 0
    # The outputs went with the job: their rows, their URLs and their files.
    assert (await gw.http.get(url)).status_code == 404
    storage_dir = gw.state.settings.storage_dir
    assert not [p for p in storage_dir.rglob("*") if done in str(p)]
    # The running one was taken off the backend: the one slot serves the next job.
    after = (await gw.generate(TXT2IMG, headers=bob)).json()["id"]
    assert (await gw.wait(after, headers=bob, timeout=15))["status"] == "succeeded"
    assert [j["id"] for j in (await gw.http.get("/v1/jobs", headers=bob)).json()["items"]] == [after]


async def test_the_stop_switch_and_the_internal_error_type_are_documented(idle_gateway) -> None:  # noqa: ANN001
    gw = await idle_gateway()
    schema = (await gw.http.get("/openapi.json")).json()
    assert "any user" in schema["paths"]["/v1/admin/jobs/{job_id}/cancel"]["post"]["summary"].lower()
    assert "any user" in schema["paths"]["/v1/admin/jobs/{job_id}"]["delete"]["summary"].lower()
    assert (
        "internal_error" in schema["components"]["schemas"]["JobError"]["properties"]["type"]["description"]
    )


async def test_an_admin_reads_any_users_job_its_events_and_deliveries(
    emulator, make_settings, gateway_factory
) -> None:  # noqa: ANN001
    # The webhook goes to a closed port of this host: allowed, so that the job has a delivery.
    gateway = await gateway_factory(
        make_settings(comfyui_urls=[emulator.base_url], outbound_allowlist=["127.0.0.1"])
    )
    await gateway.wait_ready()
    _, bob = await gateway.create_user("bob")
    job = (
        await gateway.generate(
            {
                "template": "blur",
                "params": {"width": 32, "height": 32},
                "webhook": {"url": "http://127.0.0.1:9/hook"},
            },
            bob,
        )
    ).json()
    await gateway.wait(job["id"], headers=bob)
    # The owner's routes answer 404 to an admin (another user's job); the admin ones answer it.
    assert (await gateway.http.get(f"/v1/jobs/{job['id']}", headers=gateway.admin)).status_code == 404
    seen = (await gateway.http.get(f"/v1/admin/jobs/{job['id']}", headers=gateway.admin)).json()
    assert seen["id"] == job["id"] and seen["status"] == "succeeded" and seen["user_id"]
    # From the first logged event (Last-Event-ID: 0): the job now, then its whole log.
    events = await _sse(
        gateway, f"/v1/admin/jobs/{job['id']}/events", {**gateway.admin, "Last-Event-ID": "0"}
    )
    assert events[0] == "status" and events[-1] == "status" and "output" in events
    deliveries = (
        await gateway.http.get(f"/v1/admin/jobs/{job['id']}/webhook-deliveries", headers=gateway.admin)
    ).json()
    assert [d["event"] for d in deliveries["items"]] == ["job.succeeded"]
    # Not for users (403), and an unknown job is a 404.
    for path in ("", "/events", "/webhook-deliveries"):
        assert (await gateway.http.get(f"/v1/admin/jobs/{job['id']}{path}", headers=bob)).status_code == 403
        assert (
            await gateway.http.get(f"/v1/admin/jobs/nope{path}", headers=gateway.admin)
        ).status_code == 404


async def _sse(gateway: Gateway, path: str, headers: dict[str, str]) -> list[str]:
    names = []
    async with gateway.http.stream("GET", path, headers=headers, timeout=30) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if line.startswith("event:"):
                names.append(line.partition(":")[2].strip())
    return names
