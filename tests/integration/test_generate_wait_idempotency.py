"""`Prefer: wait=N` and `Idempotency-Key` on POST /v1/generate, against the real app."""

from __future__ import annotations

import asyncio
import time

from comfy_emulator import Emulator
from tests.integration.conftest import Gateway

BLUR = {"template": "blur", "params": {"width": 64, "height": 48, "blur_radius": 2}}


def slow(steps: int) -> dict:
    return {"template": "txt2img", "params": {"prompt": "slow", "steps": steps, "width": 64, "height": 64}}


async def count_jobs(gw: Gateway, headers: dict[str, str]) -> int:
    resp = await gw.http.get("/v1/jobs", params={"limit": 100}, headers=headers)
    assert resp.status_code == 200
    return len(resp.json()["items"])


# ---- Prefer: wait ------------------------------------------------------------------------------


async def test_prefer_wait_answers_200_with_the_finished_job(gateway: Gateway) -> None:
    resp = await gateway.generate(BLUR, headers={**gateway.admin, "Prefer": "wait=30"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["preference-applied"] == "wait=30"
    job = resp.json()
    assert job["status"] == "succeeded" and len(job["outputs"]) == 1
    assert resp.headers["location"] == f"/v1/jobs/{job['id']}"
    assert (await gateway.http.get(job["outputs"][0]["url"])).status_code == 200


async def test_prefer_wait_alone_means_the_maximum(gateway: Gateway) -> None:
    resp = await gateway.generate(BLUR, headers={**gateway.admin, "Prefer": "respond-async, wait"})
    assert resp.status_code == 200
    assert resp.headers["preference-applied"] == "wait=60"
    assert resp.json()["status"] == "succeeded"


async def test_prefer_wait_on_a_slow_job_answers_202_after_the_wait(
    gateway: Gateway, emulator: Emulator
) -> None:
    emulator.config.step_seconds = 0.5
    started = time.monotonic()
    resp = await gateway.generate(slow(40), headers={**gateway.admin, "Prefer": "wait=2"})
    elapsed = time.monotonic() - started
    assert resp.status_code == 202, resp.text
    assert "preference-applied" not in resp.headers
    assert resp.json()["status"] in ("queued", "running")
    # It held the answer for the wait (a lower bound only: never flaky on a loaded machine).
    assert elapsed >= 1.9
    await gateway.http.post(f"/v1/jobs/{resp.json()['id']}/cancel", headers=gateway.admin)


async def test_prefer_wait_with_a_bad_value_is_422_and_makes_no_job(gateway: Gateway) -> None:
    _, alice = await gateway.create_user("alice")
    resp = await gateway.generate(BLUR, headers={**alice, "Prefer": "wait=soon"})
    assert resp.status_code == 422
    assert resp.json()["errors"][0]["field"] == "Prefer"
    assert await count_jobs(gateway, alice) == 0


# ---- Idempotency-Key ---------------------------------------------------------------------------


async def test_same_key_and_body_returns_the_original_job(gateway: Gateway) -> None:
    _, alice = await gateway.create_user("alice")
    headers = {**alice, "Idempotency-Key": "order-17-attempt"}
    first = await gateway.generate(BLUR, headers=headers)
    assert first.status_code == 202
    again = await gateway.generate(BLUR, headers=headers)
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert await count_jobs(gateway, alice) == 1
    # Later, the replay shows the job as it is now.
    await gateway.wait(first.json()["id"], headers=alice)
    late = await gateway.generate(BLUR, headers=headers)
    assert late.status_code == 200 and late.json()["status"] == "succeeded"


async def test_same_key_with_another_body_is_422(gateway: Gateway) -> None:
    _, alice = await gateway.create_user("alice")
    headers = {**alice, "Idempotency-Key": "k-1"}
    assert (await gateway.generate(BLUR, headers=headers)).status_code == 202
    other = {**BLUR, "params": {**BLUR["params"], "blur_radius": 3}}
    resp = await gateway.generate(other, headers=headers)
    assert resp.status_code == 422
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["errors"][0]["field"] == "Idempotency-Key"
    assert await count_jobs(gateway, alice) == 1


async def test_keys_are_per_user(gateway: Gateway) -> None:
    _, alice = await gateway.create_user("alice")
    _, bob = await gateway.create_user("bob")
    a = await gateway.generate(BLUR, headers={**alice, "Idempotency-Key": "shared"})
    b = await gateway.generate(BLUR, headers={**bob, "Idempotency-Key": "shared"})
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] != b.json()["id"]


async def test_concurrent_requests_with_one_key_make_one_job(idle_gateway) -> None:  # noqa: ANN001
    gw: Gateway = await idle_gateway()
    _, alice = await gw.create_user("alice")
    headers = {**alice, "Idempotency-Key": "double-click"}
    answers = await asyncio.gather(*(gw.generate(BLUR, headers=headers) for _ in range(6)))
    codes = sorted(r.status_code for r in answers)
    assert codes.count(202) == 1, codes
    assert set(codes) <= {200, 202, 409}, codes
    made = next(r.json()["id"] for r in answers if r.status_code == 202)
    for r in answers:
        if r.status_code == 200:
            assert r.json()["id"] == made and r.headers["idempotent-replayed"] == "true"
        if r.status_code == 409:
            assert r.headers["content-type"].startswith("application/problem+json")
    assert await count_jobs(gw, alice) == 1


async def test_a_refused_request_frees_its_key(idle_gateway) -> None:  # noqa: ANN001
    gw: Gateway = await idle_gateway()
    _, alice = await gw.create_user("alice")
    headers = {**alice, "Idempotency-Key": "retry-me"}
    bad = await gw.generate({"template": "blur", "params": {"blur_radius": 999}}, headers=headers)
    assert bad.status_code == 422
    # The fixed request with the same key goes ahead (the failed one made no job to replay).
    good = await gw.generate(BLUR, headers=headers)
    assert good.status_code == 202
    assert await count_jobs(gw, alice) == 1


async def test_invalid_keys_are_refused_and_change_nothing(idle_gateway) -> None:  # noqa: ANN001
    gw: Gateway = await idle_gateway()
    _, alice = await gw.create_user("alice")
    for key in (b"has space", b"x" * 256, b"tab\there", "é".encode()):
        resp = await gw.http.post("/v1/generate", json=BLUR, headers={**alice, "Idempotency-Key": key})
        assert resp.status_code == 422, (key, resp.text)
        assert resp.json()["errors"][0]["field"] == "Idempotency-Key"
    assert await count_jobs(gw, alice) == 0
