"""Webhooks as a receiver meets them: a real aiohttp receiver on loopback, signatures checked with the
`standardwebhooks` reference library, retries, 410, a gateway restart, rotation, SSRF refusals."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import text
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.db import webhooks as secrets_repo
from app.db.engine import create_engine
from app.domain.webhook_secrets import SecretBox, new_secret
from comfy_emulator import Emulator
from tests.integration.conftest import Gateway
from tests.integration.webhook_receiver import Receiver
from tests.ports import free_port

BLUR = {"template": "blur", "params": {"width": 32, "height": 32, "blur_radius": 1}}
FAILING = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "HarnessFail", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
}
# Short retries, so that a test sees several attempts; the receivers are on loopback.
FAST = {
    "outbound_allowlist": ["127.0.0.1"],
    "webhook_retry_schedule": [0.3],
    "webhook_retry_jitter": 0,
    "webhook_poll_seconds": 0.05,
}


@pytest.fixture
def hooked(emulator: Emulator, make_settings, gateway_factory) -> Callable[..., Any]:  # noqa: ANN001
    """Starts a gateway on the emulator with fast webhook retries (and setting overrides)."""

    async def start(app_options: dict[str, Any] | None = None, **overrides: Any) -> Gateway:
        settings = make_settings(comfyui_urls=[emulator.base_url], **{**FAST, **overrides})
        gw = await gateway_factory(settings, **(app_options or {}))
        await gw.wait_ready()
        return gw

    return start


async def make_user(gw: Gateway, name: str, **limits: Any) -> dict[str, str]:
    """A user whose polling in these tests never meets the per-minute rate limit."""
    _, headers = await gw.create_user(name, limits={"rate_per_minute": 100_000, **limits})
    return headers


async def secret_of(gw: Gateway, headers: dict[str, str]) -> str:
    resp = await gw.http.get("/v1/me/webhook-secret", headers=headers)
    assert resp.status_code == 200, resp.text
    return resp.json()["secret"]


async def deliveries(gw: Gateway, job_id: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    resp = await gw.http.get(f"/v1/jobs/{job_id}/webhook-deliveries", headers=headers)
    assert resp.status_code == 200, resp.text
    return resp.json()["items"]


async def wait_deliveries(
    gw: Gateway,
    job_id: str,
    headers: dict[str, str],
    done: Callable[[list[dict[str, Any]]], bool],
    timeout: float = 30,
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        items = await deliveries(gw, job_id, headers)
        if done(items):
            return items
        assert time.monotonic() < deadline, f"deliveries of {job_id} never got there: {items}"
        await asyncio.sleep(0.05)


def parse_ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def test_succeeded_job_is_delivered_signed_with_a_downloadable_output(
    hooked, receiver: Receiver
) -> None:  # noqa: ANN001
    gw = await hooked()
    user = await make_user(gw, "app")
    job = (await gw.generate({**BLUR, "webhook": {"url": receiver.url("/hooks/comfy")}}, user)).json()
    assert (await gw.wait(job["id"], headers=user))["status"] == "succeeded"
    await receiver.wait_for(lambda: len(receiver.received) == 1)

    [got] = receiver.received
    # The receiver checks the signature with the reference library and its copy of the secret.
    payload = Webhook(await secret_of(gw, user)).verify(got.body, got.headers)
    assert payload["type"] == "job.succeeded"
    assert payload["data"]["id"] == job["id"] and payload["data"]["status"] == "succeeded"
    assert got.headers["Content-Type"] == "application/json"
    # The output it announces can be fetched with its signed URL alone.
    [out] = payload["data"]["outputs"]
    image = await gw.http.get(out["url"])
    assert image.status_code == 200 and image.content[:4] == b"\x89PNG"
    # Signed with someone else's secret, the same request does not verify.
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk=").verify(got.body, got.headers)

    # Only the terminal event by default (no job.running); the list shows the attempt.
    [delivery] = await wait_deliveries(
        gw, job["id"], user, lambda items: items and items[0]["status"] == "succeeded"
    )
    assert delivery["id"] == got.headers["webhook-id"] and delivery["event"] == "job.succeeded"
    assert [(a["status_code"], a["succeeded"]) for a in delivery["attempts"]] == [(200, True)]

    # Another user's job: 404, exactly like a missing one.
    other = await make_user(gw, "other")
    assert (await gw.http.get(f"/v1/jobs/{job['id']}/webhook-deliveries", headers=other)).status_code == 404
    assert (await gw.http.get("/v1/jobs/nope/webhook-deliveries", headers=other)).status_code == 404


async def test_receiver_failing_three_times_gets_it_on_the_fourth_with_one_webhook_id(
    hooked, receiver: Receiver
) -> None:  # noqa: ANN001
    gw = await hooked()
    user = await make_user(gw, "app")
    receiver.answer("/flaky", 500, 502, 503)
    job = (await gw.generate({**BLUR, "webhook": {"url": receiver.url("/flaky")}}, user)).json()

    [delivery] = await wait_deliveries(
        gw, job["id"], user, lambda items: items and items[0]["status"] == "succeeded"
    )
    # The job itself never noticed.
    assert (await gw.job(job["id"], user))["status"] == "succeeded"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 502, 503, 200]
    assert [a["error"] for a in delivery["attempts"]] == ["http_status", "http_status", "http_status", None]
    # Each retry waited for the schedule (0.3 s here), measured on the recorded attempt times.
    times = [parse_ts(a["attempted_at"]) for a in delivery["attempts"]]
    assert all((b - a).total_seconds() >= 0.3 for a, b in zip(times, times[1:]))

    secret = await secret_of(gw, user)
    assert [r.answered for r in receiver.received] == [500, 502, 503, 200]
    assert {r.headers["webhook-id"] for r in receiver.received} == {delivery["id"]}
    bodies = [Webhook(secret).verify(r.body, r.headers) for r in receiver.received]
    assert {b["data"]["id"] for b in bodies} == {job["id"]}


async def test_410_stops_retries_retry_after_is_honoured_and_redirects_are_not_followed(
    hooked, receiver: Receiver
) -> None:  # noqa: ANN001
    gw = await hooked()
    user = await make_user(gw, "app")
    receiver.answer("/gone", 410, 200)
    receiver.answer("/busy", 429, headers={"Retry-After": "2"})
    receiver.answer("/moved", 307, headers={"Location": receiver.url("/elsewhere")})
    gone = (await gw.generate({**BLUR, "webhook": {"url": receiver.url("/gone")}}, user)).json()
    busy = (await gw.generate({**BLUR, "webhook": {"url": receiver.url("/busy")}}, user)).json()
    moved = (await gw.generate({**BLUR, "webhook": {"url": receiver.url("/moved")}}, user)).json()

    # A redirect is a failed attempt, retried at the same URL; the Location is never visited.
    [redirected] = await wait_deliveries(
        gw, moved["id"], user, lambda items: items and items[0]["status"] == "succeeded"
    )
    assert [(a["status_code"], a["succeeded"]) for a in redirected["attempts"]] == [(307, False), (200, True)]
    assert redirected["attempts"][0]["error"] == "redirect_not_followed"
    assert receiver.at("/elsewhere") == [] and len(receiver.at("/moved")) == 2

    [stopped] = await wait_deliveries(
        gw, gone["id"], user, lambda items: items and items[0]["status"] == "failed"
    )
    assert [a["status_code"] for a in stopped["attempts"]] == [410]
    assert stopped["next_attempt_at"] is None and stopped["last_error"] == "gone"

    [later] = await wait_deliveries(
        gw, busy["id"], user, lambda items: items and items[0]["status"] == "succeeded"
    )
    assert [a["status_code"] for a in later["attempts"]] == [429, 200]
    first, second = (parse_ts(a["attempted_at"]) for a in later["attempts"])
    # The receiver asked for 2 s; the schedule alone would have retried after 0.3 s.
    assert (second - first).total_seconds() >= 2
    # The 410 receiver was never tried again, though it would now answer 200 (several sender
    # rounds have passed since: the busy delivery waited 2 s for its retry).
    assert [r.answered for r in receiver.at("/gone")] == [410]
    assert (await gw.job(gone["id"], user))["status"] == "succeeded"


async def test_receiver_down_across_a_gateway_restart_is_delivered_after(
    emulator: Emulator,
    make_settings,
    gateway_factory,  # noqa: ANN001
) -> None:
    port = free_port()
    settings = make_settings(comfyui_urls=[emulator.base_url], **{**FAST, "webhook_retry_schedule": [1.0]})
    first = await gateway_factory(settings)
    await first.wait_ready()
    user = await make_user(first, "app")
    url = f"http://127.0.0.1:{port}/hook"
    job = (await first.generate({**BLUR, "webhook": {"url": url}}, user)).json()
    [before] = await wait_deliveries(first, job["id"], user, lambda items: items and items[0]["attempts"])
    assert before["status"] == "pending" and before["attempts"][0]["status_code"] is None
    # Nothing listens there; the socket's own words (refused, reset ...) stay in the server's log.
    assert before["attempts"][0]["error"] == "connection_failed"
    await first.close()

    receiver = Receiver(port)
    await receiver.start()
    try:
        second = await gateway_factory(settings)
        await receiver.wait_for(lambda: len(receiver.received) >= 1)
        [got] = receiver.received
        assert got.headers["webhook-id"] == before["id"]
        assert Webhook(await secret_of(second, user)).verify(got.body, got.headers)["type"] == "job.succeeded"
        [after] = await wait_deliveries(
            second, job["id"], user, lambda items: items[0]["status"] == "succeeded"
        )
        assert after["attempts"][0] == before["attempts"][0] and after["attempts"][-1]["status_code"] == 200
    finally:
        await receiver.stop()


async def test_failed_and_canceled_are_delivered_and_the_events_filter_holds(
    hooked, receiver: Receiver
) -> None:  # noqa: ANN001
    gw = await hooked()
    user = await make_user(gw, "app", allow_raw_workflows=True)
    failed = (
        await gw.generate({"workflow": FAILING, "webhook": {"url": receiver.url("/failed")}}, user)
    ).json()
    both = (
        await gw.generate(
            {**BLUR, "webhook": {"url": receiver.url("/both"), "events": ["job.running", "job.succeeded"]}},
            user,
        )
    ).json()
    only_failed = (
        await gw.generate({**BLUR, "webhook": {"url": receiver.url("/none"), "events": ["job.failed"]}}, user)
    ).json()
    for job in (failed, both, only_failed):
        await gw.wait(job["id"], headers=user)
    # A job canceled before it ran: the dispatcher is stopped so that it stays queued.
    await gw.dispatcher.stop()
    canceled = (await gw.generate({**BLUR, "webhook": {"url": receiver.url("/canceled")}}, user)).json()
    assert (await gw.http.post(f"/v1/jobs/{canceled['id']}/cancel", headers=user)).status_code == 200

    await receiver.wait_for(
        lambda: (
            len(receiver.at("/failed")) == 1
            and len(receiver.at("/both")) == 2
            and len(receiver.at("/canceled")) == 1
        )
    )
    secret = await secret_of(gw, user)
    [f] = [Webhook(secret).verify(r.body, r.headers) for r in receiver.at("/failed")]
    assert f["type"] == "job.failed" and f["data"]["error"]["type"] == "execution_error"
    [c] = [Webhook(secret).verify(r.body, r.headers) for r in receiver.at("/canceled")]
    assert c["type"] == "job.canceled" and c["data"]["status"] == "canceled"
    assert sorted(Webhook(secret).verify(r.body, r.headers)["type"] for r in receiver.at("/both")) == [
        "job.running",
        "job.succeeded",
    ]
    # A job that succeeded, with only job.failed asked for: no delivery at all.
    assert (await gw.job(only_failed["id"], user))["status"] == "succeeded"
    assert await deliveries(gw, only_failed["id"], user) == []
    assert receiver.at("/none") == []
    # Newest first, paged like every list.
    assert [d["event"] for d in await deliveries(gw, both["id"], user)] == ["job.succeeded", "job.running"]
    url = f"/v1/jobs/{both['id']}/webhook-deliveries"
    first = (await gw.http.get(url, params={"limit": 1}, headers=user)).json()
    assert [d["event"] for d in first["items"]] == ["job.succeeded"] and first["next_cursor"]
    rest = (await gw.http.get(url, params={"limit": 1, "cursor": first["next_cursor"]}, headers=user)).json()
    assert [d["event"] for d in rest["items"]] == ["job.running"] and rest["next_cursor"] is None
    bad = await gw.http.get(url, params={"cursor": "not-a-cursor"}, headers=user)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "cursor"
    assert [d["event"] for d in await deliveries(gw, failed["id"], user)] == ["job.failed"]


async def test_a_hanging_receiver_does_not_hold_up_other_deliveries(hooked, receiver: Receiver) -> None:  # noqa: ANN001
    gw = await hooked(webhook_timeout_seconds=90, webhook_lease_seconds=180)
    user = await make_user(gw, "app")
    release = receiver.hold("/hangs")
    slow = (await gw.generate({**BLUR, "webhook": {"url": receiver.url("/hangs")}}, user)).json()
    await receiver.wait_for(lambda: len(receiver.at("/hangs")) == 1)
    # While that receiver keeps the gateway waiting, another job's webhook goes out.
    fast = (await gw.generate({**BLUR, "webhook": {"url": receiver.url("/fast")}}, user)).json()
    await wait_deliveries(gw, fast["id"], user, lambda items: items and items[0]["status"] == "succeeded")
    [hanging] = await deliveries(gw, slow["id"], user)
    assert hanging["status"] == "pending" and hanging["attempts"] == []  # still waiting for its answer
    release.set()
    await wait_deliveries(gw, slow["id"], user, lambda items: items[0]["status"] == "succeeded")


async def test_rotation_signs_with_old_and_new_during_the_grace_period(hooked, receiver: Receiver) -> None:  # noqa: ANN001
    gw = await hooked()
    user = await make_user(gw, "app")
    old = await secret_of(gw, user)
    assert old.startswith("whsec_") and await secret_of(gw, user) == old  # stable until rotated
    rotated = await gw.http.post("/v1/me/webhook-secret/rotate", headers=user)
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["secret"]
    assert new.startswith("whsec_") and new != old and await secret_of(gw, user) == new
    assert rotated.json()["previous_expires_at"] is not None

    job = (await gw.generate({**BLUR, "webhook": {"url": receiver.url("/hook")}}, user)).json()
    await receiver.wait_for(lambda: len(receiver.received) == 1)
    [got] = receiver.received
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    # A receiver that still has the old secret, and one that has the new, both accept it.
    assert Webhook(old).verify(got.body, got.headers)["data"]["id"] == job["id"]
    assert Webhook(new).verify(got.body, got.headers)["data"]["id"] == job["id"]


async def test_rotation_without_grace_drops_the_old_secret(hooked, receiver: Receiver) -> None:  # noqa: ANN001
    gw = await hooked(webhook_secret_grace_seconds=0)
    user = await make_user(gw, "app")
    old = await secret_of(gw, user)
    new = (await gw.http.post("/v1/me/webhook-secret/rotate", headers=user)).json()["secret"]
    await gw.generate({**BLUR, "webhook": {"url": receiver.url("/hook")}}, user)
    await receiver.wait_for(lambda: len(receiver.received) == 1)
    [got] = receiver.received
    assert Webhook(new).verify(got.body, got.headers)["type"] == "job.succeeded"
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(got.body, got.headers)


async def test_admin_redelivers_with_the_same_webhook_id(hooked, receiver: Receiver) -> None:  # noqa: ANN001
    gw = await hooked()
    user = await make_user(gw, "app")
    receiver.answer("/hook", 410)
    job = (await gw.generate({**BLUR, "webhook": {"url": receiver.url("/hook")}}, user)).json()
    [delivery] = await wait_deliveries(
        gw, job["id"], user, lambda items: items and items[0]["status"] == "failed"
    )

    assert (
        await gw.http.post(f"/v1/admin/webhook-deliveries/{delivery['id']}/redeliver", headers=user)
    ).status_code == 403
    assert (
        await gw.http.post("/v1/admin/webhook-deliveries/msg_nope/redeliver", headers=gw.admin)
    ).status_code == 404
    resp = await gw.http.post(f"/v1/admin/webhook-deliveries/{delivery['id']}/redeliver", headers=gw.admin)
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "pending"

    [again] = await wait_deliveries(gw, job["id"], user, lambda items: items[0]["status"] == "succeeded")
    assert [a["status_code"] for a in again["attempts"]] == [410, 200]
    assert [r.headers["webhook-id"] for r in receiver.received] == [delivery["id"]] * 2


async def test_unsafe_webhooks_are_refused_at_submit_and_nothing_is_stored(idle_gateway) -> None:  # noqa: ANN001
    gw = await idle_gateway()  # no allow-list
    user = await make_user(gw, "app")
    cases = {
        "http://127.0.0.1:8080/hook": "webhook.url",
        "http://169.254.169.254/latest/meta-data": "webhook.url",
        "http://2130706433/hook": "webhook.url",
        "http://[::ffff:10.0.0.1]/hook": "webhook.url",
        "ftp://hooks.example/x": "webhook.url",
        "https://user:pw@hooks.example/x": "webhook.url",
        "https://hooks.example/\x00": "webhook.url",
        "https://" + "a" * 2000 + ".example/": "webhook.url",
    }
    for url, field in cases.items():
        resp = await gw.generate({**BLUR, "webhook": {"url": url}}, user)
        assert resp.status_code == 422, (url, resp.text)
        assert resp.headers["content-type"] == "application/problem+json"
        assert [e["field"] for e in resp.json()["errors"]] == [field], resp.text
    for webhook in (
        {"url": "https://hooks.example/x", "events": ["job.bogus"]},
        {"url": "https://hooks.example/x", "events": []},
        {"events": ["job.failed"]},
        {"url": "https://hooks.example/x", "secret": "mine"},
    ):
        resp = await gw.generate({**BLUR, "webhook": webhook}, user)
        assert resp.status_code == 422, (webhook, resp.text)
        assert all(e["field"].startswith("webhook") for e in resp.json()["errors"]), resp.text
    assert (await gw.http.get("/v1/jobs", headers=user)).json()["items"] == []
    # A public URL is accepted as is (its host is resolved when it is used, not now).
    ok = await gw.generate({**BLUR, "webhook": {"url": "https://hooks.example/x"}}, user)
    assert ok.status_code == 202, ok.text


async def test_a_host_that_resolves_to_a_private_address_at_send_time_is_not_sent(
    hooked, receiver: Receiver
) -> None:  # noqa: ANN001
    # hooks.test resolves to the (allow-listed) receiver and to a private address: every address is
    # checked, so the delivery is refused; nothing reaches the receiver.
    async def resolver(host: str, port: int) -> list[str]:
        if host == "hooks.test":
            return ["127.0.0.1", "10.20.30.40"]
        if host == "good.test":
            return ["127.0.0.1"]
        raise OSError(f"unknown host {host}")

    gw = await hooked({"outbound_resolver": resolver}, webhook_max_attempts=2)
    user = await make_user(gw, "app")
    bad = (
        await gw.generate({**BLUR, "webhook": {"url": receiver.url("/bad", host="hooks.test")}}, user)
    ).json()
    good = (
        await gw.generate({**BLUR, "webhook": {"url": receiver.url("/good", host="good.test")}}, user)
    ).json()

    [refused] = await wait_deliveries(
        gw, bad["id"], user, lambda items: items and items[0]["status"] == "failed"
    )
    assert len(refused["attempts"]) == 2  # retried (DNS may change), then given up
    for attempt in refused["attempts"]:
        assert attempt["status_code"] is None and not attempt["succeeded"]
        # Not what the name resolved to: that would map the internal DNS for whoever submits URLs.
        assert attempt["error"] == "refused_by_guard"
    assert receiver.at("/bad") == []
    # The same receiver through a name that resolves only to it is reached, with the name as Host.
    await wait_deliveries(gw, good["id"], user, lambda items: items and items[0]["status"] == "succeeded")
    [got] = receiver.at("/good")
    assert got.headers["Host"] == f"good.test:{receiver.port}"
    metrics = (await gw.http.get("/metrics", headers=gw.admin)).text
    assert 'gateway_webhook_attempts_total{outcome="refused"} 2.0' in metrics
    assert 'gateway_webhook_deliveries_total{status="failed"} 1.0' in metrics


async def test_two_gateways_on_one_database_send_each_delivery_once(
    emulator: Emulator,
    make_settings,
    gateway_factory,
    receiver: Receiver,  # noqa: ANN001
) -> None:
    settings = make_settings(comfyui_urls=[emulator.base_url], **FAST)
    first = await gateway_factory(settings)
    await first.wait_ready()
    # The second replica only sends webhooks: both senders scan the same outbox.
    second = await gateway_factory(
        make_settings(comfyui_urls=[emulator.base_url], run_dispatcher=False, **FAST)
    )
    user = await make_user(first, "app")
    jobs = [
        (await first.generate({**BLUR, "webhook": {"url": receiver.url(f"/j{i}")}}, user)).json()
        for i in range(8)
    ]
    for job in jobs:
        await wait_deliveries(
            second, job["id"], user, lambda items: items and items[0]["status"] == "succeeded"
        )
    ids = [r.headers["webhook-id"] for r in receiver.received]
    assert len(ids) == 8 and len(set(ids)) == 8
    assert all(json.loads(r.body)["type"] == "job.succeeded" for r in receiver.received)


async def test_secrets_are_encrypted_and_a_changed_server_key_gives_users_a_new_one(
    emulator: Emulator,
    make_settings,
    gateway_factory,
    receiver: Receiver,
    db_url: str,  # noqa: ANN001
) -> None:
    first = await gateway_factory(
        make_settings(comfyui_urls=[emulator.base_url], webhook_secret_key="key one", **FAST)
    )
    await first.wait_ready()
    user = await make_user(first, "app")
    old = await secret_of(first, user)
    # Not in the database in clear.
    engine = create_engine(db_url)
    async with engine.connect() as conn:
        stored = [r[0] for r in await conn.execute(text("SELECT ciphertext FROM webhook_secrets"))]
    await engine.dispose()
    assert stored and all(old.removeprefix("whsec_") not in c for c in stored)
    await first.close()

    # The operator changes GATEWAY_WEBHOOK_SECRET_KEY: the old secret cannot be read, a new one signs.
    second = await gateway_factory(
        make_settings(comfyui_urls=[emulator.base_url], webhook_secret_key="key two", **FAST)
    )
    await second.wait_ready()
    new = await secret_of(second, user)
    assert new != old and await secret_of(second, user) == new
    await second.generate({**BLUR, "webhook": {"url": receiver.url("/hook")}}, user)
    await receiver.wait_for(lambda: len(receiver.received) == 1)
    [got] = receiver.received
    assert got.headers["webhook-signature"].count("v1,") == 1
    assert Webhook(new).verify(got.body, got.headers)["type"] == "job.succeeded"


# The simulated stale read leaves generation 1 in the session when the sender adds its own; a real
# race would not (it never saw the row), hence SQLAlchemy's identity warning here only.
@pytest.mark.filterwarnings("ignore:New instance:sqlalchemy.exc.SAWarning")
async def test_losing_the_race_to_make_a_users_secret_does_not_stall_the_delivery(
    hooked,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    """Two replicas sending a new user's first webhooks both make the user's secret; the one whose
    insert collides rolls back. That rollback must not cost the deliveries it had leased."""
    gw = await hooked()
    user_id, user = await gw.create_user("app", limits={"rate_per_minute": 100_000})
    # Generation 1 exists but cannot be read (sealed under another server key) ...
    async with gw.state.sessionmaker() as session:
        await secrets_repo.add_secret(
            session, user_id, 1, SecretBox("another server key").seal(new_secret()), retire_before=None
        )
        await session.commit()
    # ... and the sender's first look at the generations misses it, as a read that raced another
    # replica's insert would: its own generation 1 collides, and its transaction is rolled back.
    real = secrets_repo.latest_generation
    looks = 0

    async def racing(session, uid):  # noqa: ANN001, ANN202
        nonlocal looks
        looks += 1
        return None if looks == 1 else await real(session, uid)

    monkeypatch.setattr(secrets_repo, "latest_generation", racing)
    job = (await gw.generate({**BLUR, "webhook": {"url": receiver.url("/race")}}, user)).json()
    await receiver.wait_for(lambda: len(receiver.at("/race")) == 1, timeout=10)
    assert looks >= 2, "the collision was not exercised"
    payload = Webhook(await secret_of(gw, user)).verify(
        receiver.at("/race")[0].body, receiver.at("/race")[0].headers
    )
    assert payload["data"]["id"] == job["id"] and payload["type"] == "job.succeeded"
