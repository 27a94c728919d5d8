"""Comfy API v2 under /api/v2, driven by the official comfy-sdk (unmodified) against the real
gateway: emulated backends on loopback, two users, the same jobs as /v1."""

from __future__ import annotations

import asyncio
import io
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from comfy_sdk import AsyncComfy
from comfy_sdk.events import OutputReady, Preview, Progress, StatusChange
from comfy_sdk.exceptions import (
    ComfyError,
    Forbidden,
    IdempotencyKeyReuse,
    MissingAsset,
    NotFound,
    WorkflowFormatUi,
)
from PIL import Image
from sqlalchemy import select

from app.db.models import Job
from tests.integration.conftest import ADMIN_KEY, Gateway
from tests.integration.test_crash import gateway_env, start
from tests.ports import free_port

# The SDK's scenarios run on both databases; these, whose database work is the same as theirs
# (a gateway process killed and restarted, links, a refused upload), on SQLite only.
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

BLUR = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "v2"}},
}


def sampler(steps: int, seed: int = 1) -> dict[str, Any]:
    """The stock txt2img graph: the emulator's KSampler takes `step_seconds` per step."""
    return {
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": seed,
                "steps": steps,
                "cfg": 8,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "4": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"},
        },
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "v2", "images": ["8", 0]}},
    }


def png(color: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(buf, "PNG")
    return buf.getvalue()


async def sdk_user(
    gw: Gateway, name: str, monkeypatch: pytest.MonkeyPatch, **limits: Any
) -> tuple[AsyncComfy, dict[str, str]]:
    """A user allowed raw workflows, and an SDK client configured the documented way
    (COMFY_BASE_URL, the gateway key as api_key)."""
    _, headers = await gw.create_user(name, limits={"allow_raw_workflows": True, **limits})
    monkeypatch.setenv("COMFY_BASE_URL", gw.base_url)
    return AsyncComfy(api_key=headers["Authorization"].removeprefix("Bearer ")), headers


async def test_run_submit_events_outputs_and_the_same_job_on_v1(
    gateway: Gateway, monkeypatch, tmp_path: Path
) -> None:  # noqa: ANN001
    client, headers = await sdk_user(gateway, "alice", monkeypatch)
    other, _ = await sdk_user(gateway, "bob", monkeypatch)
    async with client, other:
        done = await client.run(client.workflows.from_json(BLUR))
        assert done.status == "succeeded"
        [out] = done.outputs
        assert out.type == "image" and out.content_type == "image/png" and out.node_id == "3"
        data = await out.to_bytes()
        assert data.startswith(b"\x89PNG") and len(data) == out.size_bytes
        assert await out.to_bytes(range=(1, 3)) == data[1:4]
        path = await out.to_file(tmp_path / "out.png")
        assert path.read_bytes() == data

        # The same job through /v1, in the same state, with the same output.
        v1 = await gateway.job(done.id, headers)
        assert v1["status"] == "succeeded" and [o["id"] for o in v1["outputs"]] == [out.id]

        # submit + events to the end + wait + result
        job = await client.submit(client.workflows.from_json(sampler(30)), metadata={"run": "events"})
        events = [ev async for ev in job.events()]
        kinds = [type(ev).__name__ for ev in events]
        assert isinstance(events[0], StatusChange) and isinstance(events[-1], StatusChange)
        assert events[-1].status == "succeeded"
        outputs = [ev for ev in events if isinstance(ev, OutputReady)]
        assert len(outputs) == 1 and kinds.index("OutputReady") < len(kinds) - 1
        progress = [ev for ev in events if isinstance(ev, Progress)]
        assert progress and all(0 <= p.value <= 1 for p in progress)
        assert any(p.nodes_total == 7 and p.current_node == "3" and p.steps == 30 for p in progress)
        # The emulated sampler sends a JPEG preview with each step.
        previews = [ev for ev in events if isinstance(ev, Preview)]
        assert previews and previews[0].node_id == "3" and previews[0].data[:3] == b"\xff\xd8\xff"
        await job.wait()
        assert (await job.result()).status == "succeeded" and job.metadata == {"run": "events"}
        # Another seed: ComfyUI serves the loader and the encoders from its cache (execution_cached),
        # and they count as done before the sampler starts.
        cached = await client.submit(client.workflows.from_json(sampler(6, seed=2)))
        sampling = [
            ev
            for ev in [ev async for ev in cached.events()]
            if isinstance(ev, Progress) and ev.current_node == "3"
        ]
        assert sampling and min(p.nodes_done for p in sampling) == 4
        assert (await job.get_workflow()).graph["3"]["class_type"] == "KSampler"

        # Another user's job is not found, as in v1.
        with pytest.raises(NotFound):
            await other.jobs.get(job.id)


def load_image(image: Any) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "v2in"}},
    }


async def test_assets_dedup_per_user_and_workflows_use_them_by_handle_and_by_file_name(
    gateway: Gateway,
    emulator,
    monkeypatch,  # noqa: ANN001
) -> None:
    client, headers = await sdk_user(gateway, "alice", monkeypatch)
    other, other_headers = await sdk_user(gateway, "bob", monkeypatch)
    image = png()
    async with client, other:
        first = client.assets.from_bytes(image, filename="photo.png")
        asset_id = await first.commit()
        assert first.created_new is True
        # The same bytes again: the same asset, nothing new stored.
        again = client.assets.from_bytes(image, filename="photo.png")
        assert await again.commit() == asset_id and again.created_new is False
        info = await client.assets.get(asset_id)
        assert info.hash == first.hash and info.file_path == "photo.png"

        # By handle: the SDK uploads nothing more and sends a core/ASSET reference.
        by_handle = await client.run(client.workflows.from_json(load_image(again)))
        # By the plain file name the asset was given.
        by_name = await client.run(client.workflows.from_json(load_image("photo.png")))
        for job in (by_handle, by_name):
            assert job.status == "succeeded" and len(job.outputs) == 1
        # Each was staged onto the backend from the gateway's copy of the asset.
        for job in (by_handle, by_name):
            assert (emulator.input_dir / f"gw_{job.id}_1_image.png").read_bytes() == image

        # Another user: the same bytes are not theirs to mint from, the asset is not theirs to read
        # or reference, and a file name of someone else's names nothing.
        probe = await gateway.http.head(f"/api/v2/assets/by-hash/{first.hash}", headers=other_headers)
        assert probe.status_code == 404
        with pytest.raises(NotFound):
            await other.assets.get(asset_id)
        with pytest.raises(MissingAsset):
            await other.submit(
                other.workflows.from_json(load_image({"__type": "core/ASSET", "info": {"id": asset_id}}))
            )
        with pytest.raises(MissingAsset):
            await other.submit(other.workflows.from_json(load_image("photo.png")))
        # Bob's own upload of the same bytes is his own asset.
        bobs = other.assets.from_bytes(image, filename="photo.png")
        assert await bobs.commit() != asset_id and bobs.created_new is True

        # A wrong expected_hash is refused and nothing is kept.
        wrong = await gateway.http.post(
            "/api/v2/assets",
            headers=headers,
            files={"file": ("x.png", png((1, 2, 3)), "image/png")},
            data={"content_type": "image/png", "file_path": "x.png", "expected_hash": "blake3:" + "0" * 64},
        )
        assert wrong.status_code == 409 and wrong.json()["error"]["code"] == "hash_mismatch"

        # Delete: gone for its owner, and a workflow naming it is refused.
        await client.assets.delete(asset_id)
        with pytest.raises(NotFound):
            await client.assets.get(asset_id)
        with pytest.raises(MissingAsset):
            await client.submit(client.workflows.from_json(load_image("photo.png")))


async def test_cancel_queued_and_running_list_paging_and_errors(
    gateway: Gateway, emulator, monkeypatch
) -> None:  # noqa: ANN001
    client, headers = await sdk_user(gateway, "alice", monkeypatch)
    async with client:
        running = await client.submit(client.workflows.from_json(sampler(300, seed=1)))
        queued = await client.submit(client.workflows.from_json(sampler(300, seed=2)))
        while (await gateway.job(running.id, headers))["status"] != "running":
            await asyncio.sleep(0.02)
        assert (await gateway.job(queued.id, headers))["status"] == "queued"
        for job in (queued, running):
            await job.cancel()
            assert job.status in ("canceling", "canceled")
            await job.wait()
            assert job.status == "canceled"
            # Idempotent: a second cancel answers the job as it is.
            assert (await job.cancel()).status == "canceled"
            assert (await gateway.job(job.id, headers))["status"] == "canceled"

        # Paging, newest first, and a metadata filter.
        for n in range(3):
            await client.submit(client.workflows.from_json(BLUR), metadata={"batch": "b", "n": str(n)})
        listed = [s async for s in client.list_jobs(limit=2)]
        assert len(listed) == 5 and listed[-1].id == running.id
        labelled = [s async for s in client.list_jobs(metadata={"batch": "b"}, limit=1)]
        assert [s.metadata["n"] for s in labelled] == ["2", "1", "0"]
        with pytest.raises(ComfyError) as bad_filter:
            [s async for s in client.list_jobs(metadata={'a"b': "x"})]
        assert bad_filter.value.code == "invalid_metadata_filter"

        # Errors: the v2 envelope with the SDK's codes.
        with pytest.raises(IdempotencyKeyReuse):
            await client.submit(client.workflows.from_json(BLUR), idempotency_key="k-1")
            await client.submit(client.workflows.from_json(BLUR), idempotency_key="k-1")
        with pytest.raises(WorkflowFormatUi):
            await client.submit(client.workflows.from_json({"nodes": [], "links": [], "last_node_id": 0}))
        ui = await gateway.http.post(
            "/api/v2/jobs", headers=headers, json={"workflow": {"nodes": [], "links": []}}
        )
        assert ui.status_code == 422 and ui.json()["error"]["code"] == "workflow_format_ui"
        missing = await gateway.http.get("/api/v2/jobs/nope", headers=headers)
        assert missing.status_code == 404 and missing.json() == {
            "error": {"code": "not_found", "message": "There is no job 'nope'.", "details": None}
        }
        unauth = await gateway.http.get("/api/v2/jobs", headers={"Authorization": "Bearer wrong"})
        assert unauth.status_code == 401 and unauth.json()["error"]["code"] == "unauthorized"
        bad = await gateway.http.post(
            "/api/v2/jobs",
            headers=headers,
            json={
                "workflow": {"1": {"class_type": "LoadImageOutput", "inputs": {"image": "x.png [output]"}}}
            },
        )
        assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_workflow"
        # /v1 keeps problem+json.
        v1 = await gateway.http.get("/v1/jobs/nope", headers=headers)
        assert v1.headers["content-type"] == "application/problem+json"

    _, templated = await gateway.create_user("templated")
    monkeypatch.setenv("COMFY_BASE_URL", gateway.base_url)
    async with AsyncComfy(api_key=templated["Authorization"].removeprefix("Bearer ")) as no_raw:
        with pytest.raises(Forbidden):
            await no_raw.submit(no_raw.workflows.from_json(BLUR))


async def test_a_full_queue_is_429_queue_full_and_the_sdk_waits_it_out(gateway: Gateway, monkeypatch) -> None:  # noqa: ANN001
    client, headers = await sdk_user(gateway, "alice", monkeypatch, max_queued=1)
    hog, _ = await sdk_user(gateway, "hog", monkeypatch)
    async with client, hog:
        # One quick job of alice's: her jobs' run time is what Retry-After is estimated from.
        await client.run(client.workflows.from_json(BLUR))
        busy = await hog.submit(client.workflows.from_json(sampler(60)))  # ~0.6 s on the one backend
        waiting = await client.submit(client.workflows.from_json(BLUR))
        full = await gateway.http.post("/api/v2/jobs", headers=headers, json={"workflow": BLUR})
        assert full.status_code == 429 and full.json()["error"]["code"] == "queue_full"
        assert int(full.headers["Retry-After"]) >= 1
        # The SDK waits as told and gets in once a place is free.
        accepted = await client.submit(client.workflows.from_json(BLUR))
        for job in (busy, waiting, accepted):
            assert (await job.result()).status == "succeeded"


async def running_on(gw: Gateway, backend: str) -> bool:
    async with gw.state.sessionmaker() as session:
        stmt = select(Job.id).where(Job.backend == backend, Job.status == "running")
        return (await session.execute(stmt)).first() is not None


async def test_a_v2_job_survives_the_death_of_its_backend(
    three_backends, make_settings, gateway_factory, monkeypatch
) -> None:  # noqa: ANN001
    victim = three_backends[0]
    gw = await gateway_factory(
        make_settings(comfyui_urls=[e.base_url for e in three_backends], failover_grace_seconds=1.0)
    )
    await gw.wait_ready()
    client, headers = await sdk_user(gw, "alice", monkeypatch)
    async with client:
        jobs = [await client.submit(client.workflows.from_json(sampler(20, seed=n))) for n in range(6)]
        # Killed while it runs one of them.
        while not await running_on(gw, victim.base_url):
            await asyncio.sleep(0.01)
        await victim.kill()
        for job in jobs:
            assert (await job.result()).status == "succeeded" and len(job.outputs) == 1
            v1 = await gw.job(job.id, headers)
            assert v1["status"] == "succeeded" and [o["id"] for o in v1["outputs"]] == [job.outputs[0].id]
    async with gw.state.sessionmaker() as session:
        rows = (await session.execute(select(Job).where(Job.id.in_([j.id for j in jobs])))).scalars().all()
    assert any(r.attempts > 1 for r in rows), "the victim had v2 jobs in flight; they must have moved"


@SQLITE_ONLY
async def test_v2_jobs_survive_a_gateway_kill_9(emulator, db_url: str, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    env = gateway_env(db_url, emulator.base_url, tmp_path)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "gateway.log"
    first = await start(env, port, log)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        user = await http.post(
            "/v1/admin/users",
            json={"name": "alice", "limits": {"allow_raw_workflows": True, "rate_per_minute": 100_000}},
            headers=admin,
        )
        key = (
            await http.post(f"/v1/admin/users/{user.json()['id']}/keys", json={"name": "t"}, headers=admin)
        ).json()["key"]
    monkeypatch.setenv("COMFY_BASE_URL", base)
    second = None
    try:
        async with AsyncComfy(api_key=key) as client:
            photo = client.assets.from_bytes(png(), filename="photo.png")
            jobs = [await client.submit(client.workflows.from_json(sampler(15, seed=n))) for n in range(3)]
            jobs.append(await client.submit(client.workflows.from_json(load_image(photo))))
            deadline = asyncio.get_running_loop().time() + 60
            while (await client.jobs.get(jobs[0].id)).status != "running":
                assert asyncio.get_running_loop().time() < deadline, "the first job never started"
                await asyncio.sleep(0.05)
            first.send_signal(signal.SIGKILL)
            first.wait()
            second = await start(env, port, log)
            for job in jobs:
                assert (await job.result()).status == "succeeded" and len(job.outputs) == 1
                assert (await job.outputs[0].to_bytes()).startswith(b"\x89PNG")
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(15)
    # Each job's prompt ran once: none ran twice.
    executed = Counter(emulator.executed_prompts)
    assert sum(executed.values()) == len(jobs) and set(executed.values()) == {1}


@SQLITE_ONLY
async def test_links_follow_the_public_base_url_behind_a_proxy(idle_gateway) -> None:  # noqa: ANN001
    gw = await idle_gateway(public_base_url="https://gpu.example.com/comfy/")
    _, headers = await gw.create_user("alice", limits={"allow_raw_workflows": True})
    resp = await gw.http.post("/api/v2/jobs", headers=headers, json={"workflow": BLUR})
    assert resp.status_code == 201, resp.text
    job = resp.json()
    root = f"https://gpu.example.com/comfy/api/v2/jobs/{job['id']}"
    assert job["urls"] == {"self": root, "events": f"{root}/events", "cancel": f"{root}/cancel"}
    # The same job on /v1, queued as well.
    assert (await gw.job(job["id"], headers))["status"] == job["status"] == "queued"


@SQLITE_ONLY
async def test_an_oversized_asset_is_413_in_the_v2_envelope_and_nothing_is_kept(
    idle_gateway, tmp_path: Path
) -> None:  # noqa: ANN001
    gw = await idle_gateway(max_upload_bytes=10_000)
    _, headers = await gw.create_user("alice")
    big = b"\0" * 200_000

    async def unannounced():  # noqa: ANN202 - no Content-Length: counted as it arrives
        yield big[:100_000]
        yield big[100_000:]

    for announced in (True, False):
        content = big if announced else unannounced()
        resp = await gw.http.post(
            "/api/v2/assets",
            headers={**headers, "Content-Type": "multipart/form-data; boundary=x"},
            content=content,
        )
        assert resp.status_code == 413 and resp.json()["error"]["code"] == "payload_too_large", resp.text
    assert not list((tmp_path / "outputs").rglob("assets/*"))
