"""Per-user limits (429 with Retry-After and RateLimit fields, nothing created) and resource bounds."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
from sqlalchemy import update

from app.db.models import Job, RateBucket
from app.db.types import utcnow
from tests.integration.conftest import Gateway

BLUR = {"template": "blur", "params": {"width": 16, "height": 16}}


async def job_ids(gw: Gateway, user_id: str) -> list[str]:
    page = await gw.http.get(f"/v1/admin/jobs?user_id={user_id}&limit=100", headers=gw.admin)
    return [j["id"] for j in page.json()["items"]]


def assert_limited(resp: httpx.Response, limit: str, policy: str, quota: int, window: int | None) -> int:
    """A 429 that names the limit, with an honest Retry-After and the draft's fields; returns Retry-After."""
    assert resp.status_code == 429, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    assert body["status"] == 429 and body["limit"] == limit
    retry = resp.headers["retry-after"]
    assert retry.isdigit() and int(retry) >= 1
    expected_policy = f'"{policy}";q={quota}' + (f";w={window}" if window else "")
    assert resp.headers["ratelimit-policy"] == expected_policy
    # Nothing left, and the effective window ends when Retry-After says.
    assert resp.headers["ratelimit"] == f'"{policy}";r=0;t={retry}'
    return int(retry)


async def test_request_rate_is_limited_on_every_route_and_recovers(idle_gateway) -> None:  # noqa: ANN001
    gw = await idle_gateway()
    user_id, user = await gw.create_user("chatty", limits={"rate_per_minute": 30})  # a token every 2 s
    first = await gw.http.get("/v1/me", headers=user)
    assert first.headers["ratelimit-policy"] == '"per-minute";q=30;w=60'
    assert first.headers["ratelimit"].startswith('"per-minute";r=29;t=')
    assert first.json()["usage"]["rate_remaining"] == 29
    statuses = [first.status_code]
    while statuses[-1] == 200 and len(statuses) < 40:
        statuses.append((await gw.http.get("/v1/jobs", headers=user)).status_code)
    # The burst is the per-minute rate: about 30 pass (a token trickles in meanwhile), then 429.
    assert statuses[-1] == 429 and 30 <= statuses.count(200) <= 32, statuses
    refused = await gw.http.get("/v1/templates", headers=user)
    retry = assert_limited(refused, "rate_per_minute", "per-minute", 30, 60)
    assert retry <= 2
    # Over the rate, a submit is refused too, and creates nothing.
    assert_limited(await gw.generate(BLUR, headers=user), "rate_per_minute", "per-minute", 30, 60)
    assert await job_ids(gw, user_id) == []
    # Other users and the bootstrap admin are not affected.
    _, other = await gw.create_user("quiet")
    assert (await gw.http.get("/v1/jobs", headers=other)).status_code == 200
    admin = await gw.http.get("/v1/jobs", headers=gw.admin)
    assert admin.status_code == 200 and "ratelimit" not in admin.headers
    # Once Retry-After has passed (the bucket's row says so), a request goes through again.
    async with gw.state.sessionmaker() as session:
        await session.execute(
            update(RateBucket)
            .where(RateBucket.user_id == user_id)
            .values(refilled_at=RateBucket.refilled_at - retry)
        )
        await session.commit()
    assert (await gw.http.get("/v1/me", headers=user)).status_code == 200
    assert (await gw.http.get("/v1/me", headers=user)).status_code == 429
    # An admin raising the rate: the very next request goes through, with a full bucket of the new size.
    resp = await gw.http.patch(
        f"/v1/admin/users/{user_id}", json={"limits": {"rate_per_minute": 600}}, headers=gw.admin
    )
    assert resp.status_code == 200
    again = await gw.http.get("/v1/me", headers=user)
    assert again.status_code == 200 and again.headers["ratelimit"].startswith('"per-minute";r=599;')


async def test_max_queued_refuses_with_429_and_creates_nothing(idle_gateway) -> None:  # noqa: ANN001
    gw = await idle_gateway(default_max_queued=2)
    user_id, user = await gw.create_user("queuer", limits={"max_priority": 5})  # max_queued: the default
    # A priority above the user's maximum is capped at it; a negative one is kept.
    accepted = [await gw.generate({**BLUR, "priority": p}, headers=user) for p in (6, -3)]
    assert [r.status_code for r in accepted] == [202, 202]
    assert [r.json()["priority"] for r in accepted] == [5, -3]
    refused = await gw.generate(BLUR, headers=user)
    assert_limited(refused, "max_queued", "queued", 2, None)
    assert "max_queued" in refused.json()["detail"]
    assert len(await job_ids(gw, user_id)) == 2
    me = (await gw.http.get("/v1/me", headers=user)).json()
    assert me["usage"]["queued"] == 2 and me["usage"]["jobs_today"] == 2 and me["limits"]["max_queued"] == 2
    # A canceled job frees its slot.
    await gw.http.post(f"/v1/jobs/{accepted[0].json()['id']}/cancel", headers=user)
    assert (await gw.generate(BLUR, headers=user)).status_code == 202
    assert (await gw.generate(BLUR, headers=user)).status_code == 429
    # A raised limit applies to the very next request, without a restart.
    await gw.http.patch(f"/v1/admin/users/{user_id}", json={"limits": {"max_queued": 3}}, headers=gw.admin)
    assert (await gw.generate(BLUR, headers=user)).status_code == 202
    assert len(await job_ids(gw, user_id)) == 4
    # The bootstrap admin key is not limited: no queue cap, no rate, any priority.
    for _ in range(3):
        resp = await gw.generate({**BLUR, "priority": 1000})
        assert resp.status_code == 202 and "ratelimit" not in resp.headers and resp.json()["priority"] == 1000
    me = (await gw.http.get("/v1/me", headers=gw.admin)).json()
    assert me["usage"]["queued"] == 3 and me["usage"]["rate_remaining"] is None


async def test_concurrent_submits_never_overshoot_max_queued(idle_gateway) -> None:  # noqa: ANN001
    gw = await idle_gateway()
    user_id, user = await gw.create_user("bursty", limits={"max_queued": 5})
    results = await asyncio.gather(*(gw.generate(BLUR, headers=user) for _ in range(20)))
    codes = sorted(r.status_code for r in results)
    assert codes == [202] * 5 + [429] * 15
    assert len(await job_ids(gw, user_id)) == 5


async def test_jobs_per_day_is_a_rolling_24_hours_with_an_exact_retry_after(idle_gateway) -> None:  # noqa: ANN001
    gw = await idle_gateway()
    user_id, user = await gw.create_user("daily", limits={"jobs_per_day": 2})
    first, second = [(await gw.generate(BLUR, headers=user)).json()["id"] for _ in range(2)]
    retry = assert_limited(await gw.generate(BLUR, headers=user), "jobs_per_day", "per-day", 2, 86400)
    assert 86390 <= retry <= 86400  # both jobs are seconds old: the oldest turns 24 h old tomorrow
    # Canceling does not give the day's job back.
    await gw.http.post(f"/v1/jobs/{first}/cancel", headers=user)
    assert (await gw.generate(BLUR, headers=user)).status_code == 429

    async def age(job_id: str, delta: timedelta) -> None:
        async with gw.state.sessionmaker() as session:
            await session.execute(update(Job).where(Job.id == job_id).values(created_at=utcnow() - delta))
            await session.commit()

    # Time passes (the row says so): the first job is 30 s short of a day old.
    await age(first, timedelta(hours=24) - timedelta(seconds=30))
    retry = assert_limited(await gw.generate(BLUR, headers=user), "jobs_per_day", "per-day", 2, 86400)
    assert 29 <= retry <= 31
    await age(first, timedelta(hours=24, seconds=1))
    assert (await gw.generate(BLUR, headers=user)).status_code == 202
    assert (await gw.http.get("/v1/me", headers=user)).json()["usage"]["jobs_today"] == 2
    assert second in await job_ids(gw, user_id)
    # Back to the default (5000) with a null, at once.
    await gw.http.patch(
        f"/v1/admin/users/{user_id}", json={"limits": {"jobs_per_day": None}}, headers=gw.admin
    )
    assert (await gw.generate(BLUR, headers=user)).status_code == 202


async def test_bounds_refuse_oversized_input_and_store_nothing(idle_gateway) -> None:  # noqa: ANN001
    gw = await idle_gateway(max_param_string_length=50, max_metadata_bytes=100, max_body_bytes=4096)
    user_id, user = await gw.create_user("bounded", limits={"rate_per_minute": 1000})
    # The gateway's own cap on string params, below the template's maxLength (2000), shown in its schema.
    long_prompt = await gw.generate({"template": "txt2img", "params": {"prompt": "x" * 51}}, headers=user)
    assert long_prompt.status_code == 422 and long_prompt.json()["errors"][0]["param"] == "prompt"
    schema = (await gw.http.get("/v1/templates/txt2img", headers=user)).json()["params_schema"]
    assert schema["properties"]["prompt"]["maxLength"] == 50
    big_meta = await gw.generate({**BLUR, "metadata": {"note": "y" * 200}}, headers=user)
    assert big_meta.status_code == 422 and big_meta.json()["errors"][0]["field"] == "metadata"
    big_body = await gw.http.post(
        "/v1/generate",
        content=b'{"template": "blur", "metadata": {"n": "' + b"z" * 5000 + b'"}}',
        headers={**user, "content-type": "application/json"},
    )
    assert big_body.status_code == 413 and big_body.headers["content-type"] == "application/problem+json"
    for path in ("/v1/jobs?limit=101", "/v1/templates?limit=101", "/v1/admin/users?limit=101"):
        resp = await gw.http.get(path, headers=gw.admin)
        assert resp.status_code == 422, path
    assert await job_ids(gw, user_id) == []
    assert (
        await gw.generate({"template": "txt2img", "params": {"prompt": "x" * 50}}, headers=user)
    ).status_code == 202
