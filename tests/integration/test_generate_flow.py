"""The walking skeleton: generate → dispatch → WebSocket tracking → stored outputs → download."""

from __future__ import annotations

import asyncio
import hashlib
import json

import httpx

from app.domain.users import BOOTSTRAP_ADMIN_ID
from tests.integration.conftest import Gateway, metric_sum

BLUR = {"template": "blur", "params": {"width": 64, "height": 48, "blur_radius": 2}}


async def read_sse(
    gw: Gateway, job_id: str, headers: dict[str, str], *, timeout: float = 20
) -> list[tuple[str, dict]]:
    """Every event of a job's stream until the server ends it."""
    events: list[tuple[str, dict]] = []
    async with gw.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout) as resp:
        assert resp.status_code == 200, await resp.aread()
        assert resp.headers["content-type"].startswith("text/event-stream")
        event = None
        async for line in resp.aiter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event:
                events.append((event, json.loads(line.split(":", 1)[1])))
                event = None
    return events


async def test_txt2img_end_to_end_with_progress_and_download(gateway: Gateway) -> None:
    resp = await gateway.generate(
        {"template": "txt2img", "params": {"prompt": "a lighthouse at dusk", "steps": 6}}
    )
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert resp.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    # Resolved params: defaults filled in, the random seed made concrete.
    assert job["params"]["width"] == 512 and isinstance(job["params"]["seed"], int)
    assert job["params"]["prompt"] == "a lighthouse at dusk"

    events = await read_sse(gateway, job["id"], gateway.admin)
    kinds = [e for e, _ in events]
    assert kinds[0] == "status"
    statuses = [d["status"] for e, d in events if e == "status"]
    assert statuses[-1] == "succeeded"
    assert "running" in statuses
    progress = [d for e, d in events if e == "progress"]
    assert progress and progress[-1]["value"] == progress[-1]["max"] == 6
    assert all(p["node"] == "3" for p in progress)  # the KSampler node
    outputs_seen = [d for e, d in events if e == "output"]
    assert len(outputs_seen) == 1

    final = await gateway.job(job["id"])
    assert final["status"] == "succeeded" and final["attempts"] == 1
    assert final["started_at"] and final["finished_at"] and final["error"] is None
    [out] = final["outputs"]
    assert out["node_id"] == "9" and out["content_type"] == "image/png"
    # The signed URL works without any Authorization header (an <img src>).
    data = await gateway.http.get(out["url"])
    assert data.status_code == 200
    assert data.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert hashlib.sha256(data.content).hexdigest() == out["sha256"]
    assert len(data.content) == out["size"]
    assert data.headers["content-type"] == "image/png"
    assert data.headers["etag"] == f'"{out["sha256"]}"'


async def test_a_running_jobs_progress_counts_in_whole_steps(gateway: Gateway, emulator) -> None:  # noqa: ANN001
    emulator.config.step_seconds = 0.05
    job = (
        await gateway.generate(
            {"template": "txt2img", "params": {"prompt": "steps", "steps": 40, "width": 64, "height": 64}}
        )
    ).json()
    for _ in range(200):
        resp = await gateway.http.get(f"/v1/jobs/{job['id']}", headers=gateway.admin)
        if resp.json()["progress"]:
            break
        await asyncio.sleep(0.02)
    progress = resp.json()["progress"]
    assert progress is not None and progress["node"] == "3"
    # As the contract shows it: {"value": 5, "max": 20}, not 5.0 / 20.0.
    assert type(progress["value"]) is int and progress["max"] == 40 and type(progress["max"]) is int
    await gateway.wait(job["id"])


async def test_output_is_served_from_gateway_storage_after_backend_forgets(
    gateway: Gateway, emulator
) -> None:  # noqa: ANN001
    job = (await gateway.generate(BLUR)).json()
    final = await gateway.wait(job["id"])
    assert final["status"] == "succeeded"
    await emulator.restart()  # ComfyUI loses its queue and history (and its files may go too)
    out = final["outputs"][0]
    resp = await gateway.http.get(f"/v1/jobs/{job['id']}/outputs/{out['id']}", headers=gateway.admin)
    assert resp.status_code == 200
    assert hashlib.sha256(resp.content).hexdigest() == out["sha256"]
    # Conditional request: the ETag is the sha256.
    again = await gateway.http.get(out["url"], headers={"If-None-Match": f'"{out["sha256"]}"'})
    assert again.status_code == 304


async def test_execution_error_fails_the_job_with_the_node_and_no_traceback(gateway: Gateway) -> None:
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "HarnessFail", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
    }
    job = (await gateway.generate({"workflow": workflow})).json()
    final = await gateway.wait(job["id"])
    assert final["status"] == "failed"
    err = final["error"]
    assert err["type"] == "execution_error"
    assert err["node_id"] == "2" and err["node_type"] == "HarnessFail"
    assert "harness failure" in err["message"]
    assert "Traceback" not in json.dumps(err) and "traceback" not in err
    assert final["outputs"] == []


async def test_workflow_refused_by_comfyui_fails_with_node_errors(gateway: Gateway) -> None:
    workflow = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 500, "sigma": 1.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
    }
    job = (await gateway.generate({"workflow": workflow})).json()
    final = await gateway.wait(job["id"])
    assert final["status"] == "failed"
    err = final["error"]
    assert err["type"] == "invalid_workflow"
    assert err["node_id"] == "2" and err["node_type"] == "ImageBlur"
    assert err["node_errors"]["2"]["errors"][0]["type"] == "value_bigger_than_max"


async def test_bad_params_are_422_naming_them_and_create_nothing(gateway: Gateway) -> None:
    resp = await gateway.generate(
        {"template": "txt2img", "params": {"prompt": "x", "width": 7, "bogus": 1, "sampler": "nope"}}
    )
    assert resp.status_code == 422
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    named = {e["param"] for e in body["errors"]}
    assert {"width", "bogus", "sampler"} <= named
    assert "bogus" in body["detail"]
    missing = await gateway.generate({"template": "txt2img", "params": {}})
    assert missing.status_code == 422 and any(e["param"] == "prompt" for e in missing.json()["errors"])
    unknown = await gateway.generate({"template": "no-such-template", "params": {}})
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "template"
    listing = await gateway.http.get("/v1/jobs", headers=gateway.admin)
    assert listing.json()["items"] == []


async def test_malformed_requests_are_problems_not_500(gateway: Gateway) -> None:
    resp = await gateway.http.post(
        "/v1/generate", content=b"{not json", headers={**gateway.admin, "content-type": "application/json"}
    )
    assert resp.status_code == 422 and resp.headers["content-type"] == "application/problem+json"
    both = await gateway.generate({"template": "blur", "workflow": {"1": {}}})
    assert both.status_code == 422
    extra = await gateway.generate({**BLUR, "surprise": True})
    assert extra.status_code == 422 and "surprise" in extra.text
    big = await gateway.http.post(
        "/v1/generate",
        content=b"{" + b" " * (5 * 1024 * 1024) + b"}",
        headers={**gateway.admin, "content-type": "application/json"},
    )
    assert big.status_code == 413
    bad_cursor = await gateway.http.get("/v1/jobs?cursor=garbage", headers=gateway.admin)
    assert bad_cursor.status_code == 422
    bad_status = await gateway.http.get("/v1/jobs?status=exploded", headers=gateway.admin)
    assert bad_status.status_code == 422
    nope = await gateway.http.get("/v1/nothing-here", headers=gateway.admin)
    assert nope.status_code == 404 and nope.headers["content-type"] == "application/problem+json"


async def test_auth_missing_wrong_and_other_users_objects(gateway: Gateway) -> None:
    assert (await gateway.http.get("/v1/jobs")).status_code == 401
    wrong = await gateway.http.get("/v1/jobs", headers={"Authorization": "Bearer cgw_wrong"})
    assert wrong.status_code == 401 and wrong.headers["content-type"] == "application/problem+json"

    _, alice = await gateway.create_user("alice")
    _, bob = await gateway.create_user("bob")
    job = (await gateway.generate(BLUR, headers=alice)).json()
    final = await gateway.wait(job["id"], headers=alice)
    out = final["outputs"][0]
    # Bob sees exactly what a missing id looks like, on every route that takes the id.
    missing = await gateway.http.get("/v1/jobs/00000000-0000-0000-0000-00000000dead", headers=bob)
    for method, path in [
        ("GET", f"/v1/jobs/{job['id']}"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
        ("GET", f"/v1/jobs/{job['id']}/events"),
        ("GET", f"/v1/jobs/{job['id']}/outputs/{out['id']}"),
    ]:
        resp = await gateway.http.request(method, path, headers=bob)
        assert resp.status_code == 404, (method, path, resp.text)
        assert resp.json()["type"] == missing.json()["type"]
    assert (await gateway.http.get("/v1/jobs", headers=bob)).json()["items"] == []
    # Without a signature and without a key: 401; with a tampered signature: 401 too.
    assert (await gateway.http.get(f"/v1/jobs/{job['id']}/outputs/{out['id']}")).status_code == 401
    tampered = out["url"].replace("signature=", "signature=x")
    assert (await gateway.http.get(tampered)).status_code == 401
    # A non-admin cannot manage templates.
    put = await gateway.http.put("/v1/templates/mine", json={"workflow": {}, "params": {}}, headers=alice)
    assert put.status_code == 403


async def test_cancel_queued_pending_and_running_jobs(gateway: Gateway, emulator) -> None:  # noqa: ANN001
    emulator.hang_next()  # the first job's sampler hangs until interrupted
    slow = {"template": "txt2img", "params": {"prompt": "p", "steps": 3}}
    ids = [(await gateway.generate(slow)).json()["id"] for _ in range(4)]
    running = await gateway.wait(ids[0], {"running"})
    assert running["status"] == "running"
    # With 2 in flight, job 2 waits in ComfyUI's queue, jobs 3 and 4 in the gateway's.
    await asyncio.sleep(0.3)
    in_backend = await gateway.job(ids[1])
    assert in_backend["status"] == "queued" and in_backend["queue_position"] == 0
    queued = await gateway.job(ids[3])
    assert queued["queue_position"] >= 1

    # 1) a job only in the gateway's queue never reaches ComfyUI.
    resp = await gateway.http.post(f"/v1/jobs/{ids[3]}/cancel", headers=gateway.admin)
    assert resp.status_code == 200 and resp.json()["status"] == "canceled"
    # 2) a job waiting in ComfyUI's queue is deleted from it.
    resp = await gateway.http.post(f"/v1/jobs/{ids[1]}/cancel", headers=gateway.admin)
    assert resp.json()["status"] == "canceled"
    # 3) the running job is interrupted on its backend, by its prompt id.
    resp = await gateway.http.post(f"/v1/jobs/{ids[0]}/cancel", headers=gateway.admin)
    assert resp.json()["status"] == "canceled"
    # Each counted once, for the user who canceled them.
    metrics = (await gateway.http.get("/metrics", headers=gateway.admin)).text
    assert metric_sum(metrics, "gateway_jobs_finished_total", status="canceled", user=BOOTSTRAP_ADMIN_ID) == 3

    final3 = await gateway.wait(ids[2])
    assert final3["status"] == "succeeded"
    async with httpx.AsyncClient() as client:
        queue = (await client.get(f"{emulator.base_url}/queue")).json()
    assert queue["queue_running"] == [] and queue["queue_pending"] == []
    async with gateway.state.sessionmaker() as s:
        from app.db.models import Job

        prompt_ids = {j: (await s.get(Job, j)).prompt_id for j in ids}
    assert prompt_ids[ids[3]] is None
    assert prompt_ids[ids[3]] not in emulator.prompts_received
    assert prompt_ids[ids[1]] not in emulator.executed_prompts
    assert any(body.get("prompt_id") == prompt_ids[ids[0]] for body in emulator.interrupts)
    assert all(body.get("prompt_id") for body in emulator.interrupts)  # never an untargeted interrupt
    # Canceling again: 409 with the job as it is.
    again = await gateway.http.post(f"/v1/jobs/{ids[0]}/cancel", headers=gateway.admin)
    assert again.status_code == 409 and again.json()["job"]["status"] == "canceled"
    for job_id in ids[:2] + ids[3:]:
        assert (await gateway.job(job_id))["status"] == "canceled"


async def test_backend_down_leaves_jobs_queued_until_it_answers(gateway: Gateway, emulator) -> None:  # noqa: ANN001
    await emulator.kill()
    await asyncio.sleep(0.3)
    ready = await gateway.http.get("/readyz")
    assert ready.status_code == 503 and "backend" in ready.json()["detail"]
    job = (await gateway.generate(BLUR)).json()
    await asyncio.sleep(1.0)
    still = await gateway.job(job["id"])
    assert still["status"] == "queued" and still["error"] is None
    await emulator.revive()
    final = await gateway.wait(job["id"], timeout=30)
    assert final["status"] == "succeeded" and len(final["outputs"]) == 1
    assert (await gateway.http.get("/readyz")).status_code == 200


async def test_templates_me_health_and_listing(gateway: Gateway) -> None:
    listing = (await gateway.http.get("/v1/templates?limit=100", headers=gateway.admin)).json()
    names = {t["name"] for t in listing["items"]}
    assert {"txt2img", "img2img", "blur", "resize"} <= names
    txt = next(t for t in listing["items"] if t["name"] == "txt2img")
    assert txt["params_schema"]["type"] == "object" and "prompt" in txt["params_schema"]["required"]
    assert "workflow" not in txt

    carol_id, user = await gateway.create_user("carol")
    one = (await gateway.http.get("/v1/templates/blur", headers=user)).json()
    assert "workflow" not in one
    assert "workflow" in (await gateway.http.get("/v1/templates/blur", headers=gateway.admin)).json()
    assert (await gateway.http.get("/v1/templates/nope", headers=user)).status_code == 404

    # Admin registers a template; a bind to a missing input is refused and changes nothing.
    doc = {
        "description": "tiny",
        "workflow": {
            "1": {
                "class_type": "EmptyImage",
                "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
            },
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "tiny"}},
        },
        "params": {
            "size": {
                "type": "integer",
                "default": 8,
                "minimum": 1,
                "maximum": 64,
                "bind": ["1.inputs.width", "1.inputs.height"],
            }
        },
        "outputs": ["2"],
    }
    bad = {**doc, "params": {"size": {"type": "integer", "default": 8, "bind": ["1.inputs.nope"]}}}
    assert (await gateway.http.put("/v1/templates/tiny", json=bad, headers=gateway.admin)).status_code == 422
    assert (await gateway.http.get("/v1/templates/tiny", headers=user)).status_code == 404
    created = await gateway.http.put("/v1/templates/tiny", json=doc, headers=gateway.admin)
    assert created.status_code == 201, created.text
    job = (await gateway.generate({"template": "tiny", "params": {"size": 16}}, headers=user)).json()
    assert (await gateway.wait(job["id"], headers=user))["status"] == "succeeded"
    assert (await gateway.http.delete("/v1/templates/tiny", headers=gateway.admin)).status_code == 204
    assert (await gateway.generate({"template": "tiny"}, headers=user)).status_code == 422

    me = (await gateway.http.get("/v1/me", headers=user)).json()
    assert me["name"] == "carol" and me["is_admin"] is False
    assert me["limits"]["max_queued"] >= 100 and me["limits"]["rate_per_minute"] >= 120
    usage = me["usage"]
    assert (usage["queued"], usage["running"], usage["jobs_today"]) == (0, 0, 1)
    assert 0 < usage["rate_remaining"] < me["limits"]["rate_per_minute"]  # this test's requests spent some

    assert (await gateway.http.get("/healthz")).json() == {"status": "ok"}
    assert (await gateway.http.get("/readyz")).status_code == 200
    # Counted per user and per backend.
    metrics = (await gateway.http.get("/metrics", headers=gateway.admin)).text
    assert metric_sum(metrics, "gateway_jobs_submitted_total", template="tiny", user=carol_id) == 1
    backend = gateway.dispatcher.links[0].url
    assert (
        metric_sum(metrics, "gateway_jobs_finished_total", status="succeeded", user=carol_id, backend=backend)
        == 1
    )
    assert metric_sum(metrics, "gateway_job_run_seconds_count", backend=backend) >= 1


async def test_job_list_is_newest_first_and_paginated(gateway: Gateway) -> None:
    ids = [(await gateway.generate(BLUR)).json()["id"] for _ in range(5)]
    for job_id in ids:
        await gateway.wait(job_id)
    seen: list[str] = []
    cursor = None
    while True:
        url = "/v1/jobs?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await gateway.http.get(url, headers=gateway.admin)).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    done = (await gateway.http.get("/v1/jobs?status=succeeded", headers=gateway.admin)).json()
    assert len(done["items"]) == 5
    assert (await gateway.http.get("/v1/jobs?status=failed", headers=gateway.admin)).json()["items"] == []


async def test_template_list_is_newest_first_and_paginated(gateway: Gateway) -> None:
    blur = (await gateway.http.get("/v1/templates/blur", headers=gateway.admin)).json()
    doc = {"description": "newest", "workflow": blur["workflow"], "params": {}, "outputs": blur["outputs"]}
    assert (
        await gateway.http.put("/v1/templates/zz-newest", json=doc, headers=gateway.admin)
    ).status_code == 201
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await gateway.http.get("/v1/templates", params=params, headers=gateway.admin)).json()
        assert len(page["items"]) <= 2
        seen += [t["name"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen[0] == "zz-newest"
    assert len(seen) == len(set(seen)) and {"txt2img", "img2img", "blur"} <= set(seen)
    bad = await gateway.http.get("/v1/templates", params={"cursor": "x"}, headers=gateway.admin)
    assert bad.status_code == 422


async def test_queued_and_running_jobs_per_user_are_gauged(idle_gateway) -> None:  # noqa: ANN001
    gw: Gateway = await idle_gateway(metrics_refresh_seconds=0.05)  # no dispatcher: jobs stay queued
    dave_id, dave = await gw.create_user("dave")
    jobs = [(await gw.generate(BLUR, headers=dave)).json() for _ in range(2)]

    async def queued() -> float:
        await asyncio.sleep(0.3)  # a few refreshes
        return metric_sum(
            (await gw.http.get("/metrics", headers=gw.admin)).text,
            "gateway_jobs_active",
            status="queued",
            user=dave_id,
        )

    assert await queued() == 2
    await gw.http.post(f"/v1/jobs/{jobs[0]['id']}/cancel", headers=dave)
    assert await queued() == 1
    await gw.http.post(f"/v1/jobs/{jobs[1]['id']}/cancel", headers=dave)
    # Gone from the export once nothing of the user's is active.
    assert await queued() == 0
    assert f'user="{dave_id}"' not in "".join(
        line
        for line in (await gw.http.get("/metrics", headers=gw.admin)).text.splitlines()
        if line.startswith("gateway_jobs_active")
    )
