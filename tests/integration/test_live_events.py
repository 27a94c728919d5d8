"""Live events as a client meets them: SSE with ids and Last-Event-ID resume, /v1/ws, previews."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
import websockets

from app.domain.events import bus as live_bus
from comfy_emulator import Emulator
from tests.integration.conftest import Gateway, SseEvent, metric_sum

TERMINAL = {"succeeded", "failed", "canceled"}


def txt2img(steps: int, prompt: str = "a lighthouse") -> dict[str, Any]:
    return {"template": "txt2img", "params": {"prompt": prompt, "steps": steps, "width": 64, "height": 64}}


def without_urls(data: Any) -> Any:
    """Output URLs are signed when an event is sent, so their expiry differs between two sends."""
    if isinstance(data, dict):
        return {k: without_urls(v) for k, v in data.items() if k != "url"}
    if isinstance(data, list):
        return [without_urls(v) for v in data]
    return data


def ids(events: list[SseEvent]) -> list[int]:
    return [int(e.id) for e in events if e.id is not None]


async def test_sse_happy_path_status_progress_output_final_status(
    gateway: Gateway, emulator: Emulator
) -> None:
    emulator.config.step_seconds = 0.05
    job = (await gateway.generate(txt2img(12))).json()
    events = await gateway.sse(job["id"])

    assert events[0].event == "status"
    kinds = [e.event for e in events]
    assert "progress" in kinds and kinds.count("output") == 1
    assert events[-1].event == "status" and events[-1].data["status"] == "succeeded"
    # The output event comes before the final status, which carries it too (with a working URL).
    assert kinds.index("output") < len(events) - 1
    [out] = events[-1].data["outputs"]
    assert out["id"] == next(e.data["id"] for e in events if e.event == "output")
    assert (await gateway.http.get(out["url"])).status_code == 200
    # Every event has an id, increasing.
    assert all(e.id is not None for e in events)
    assert ids(events) == sorted(set(ids(events)))
    # Progress is coalesced (at most a few a second per job), but the last step always arrives.
    progress = [e.data for e in events if e.event == "progress"]
    assert len(progress) < 12
    assert progress[-1] == {"value": 12, "max": 12, "node": "3"}
    statuses = [e.data["status"] for e in events if e.event == "status"]
    assert "running" in statuses


async def test_reconnect_with_last_event_id_gets_what_was_missed_once(
    gateway: Gateway, emulator: Emulator
) -> None:
    emulator.config.step_seconds = 0.1
    job = (await gateway.generate(txt2img(20))).json()
    # One client reads the whole stream; the other goes away after its second progress event.
    whole_task = asyncio.create_task(gateway.sse(job["id"]))
    first = await gateway.sse(job["id"], stop=lambda evs: sum(e.event == "progress" for e in evs) >= 2)
    last_seen = first[-1].id
    assert first[-1].event == "progress" and last_seen is not None
    # Reconnect while the job still runs, as an EventSource does.
    resumed_stream = await gateway.sse(job["id"], last_event_id=last_seen)
    whole = await whole_task

    # It starts with the job as it is now, without an id (Last-Event-ID stays where it was) ...
    now, rest = resumed_stream[0], resumed_stream[1:]
    assert now.event == "status" and now.id is None and now.data["status"] == "running"
    # ... then what was missed.
    assert rest[0].event != "status" or rest[0].data["status"] != "queued"
    assert rest[-1].event == "status" and rest[-1].data["status"] == "succeeded"
    assert int(rest[0].id) > int(last_seen)
    assert any(e.event == "progress" for e in rest), "the job was still running when the client came back"
    # Nothing repeated, nothing missing: the two halves together are what the whole stream had,
    # from the first event both saw, with the same ids and contents.
    resumed = first + rest
    assert len(ids(resumed)) == len(set(ids(resumed)))
    start = max(int(first[0].id), int(whole[0].id))
    tail_whole = [(e.id, e.event, without_urls(e.data)) for e in whole if int(e.id) > start]
    tail_resumed = [(e.id, e.event, without_urls(e.data)) for e in resumed if int(e.id) > start]
    assert tail_resumed == tail_whole


async def test_reconnect_after_the_end_gets_the_rest_then_the_stream_ends(gateway: Gateway) -> None:
    job = (await gateway.generate(txt2img(4))).json()
    whole = await gateway.sse(job["id"])
    # A client that saw only up to the first event comes back after the job ended.
    rest = await gateway.sse(job["id"], last_event_id=whole[0].id)
    assert [e.id for e in rest] == [None] + [e.id for e in whole[1:]]
    assert rest[0].data["status"] == rest[-1].data["status"] == "succeeded"
    # One that saw everything gets only the job as it is now (no id: nothing it has not seen), and
    # the stream ends.
    again = await gateway.sse(job["id"], last_event_id=whole[-1].id)
    assert [(e.event, e.id, e.data["status"]) for e in again] == [("status", None, "succeeded")]


async def test_late_subscriber_gets_the_current_state(gateway: Gateway, emulator: Emulator) -> None:
    emulator.config.step_seconds = 0.1
    job = (await gateway.generate(txt2img(30))).json()
    await gateway.wait(job["id"], {"running"})
    mid = await gateway.sse(job["id"], stop=lambda evs: True)
    assert mid[0].event == "status" and mid[0].data["status"] == "running"
    assert mid[0].data["started_at"] is not None
    await gateway.wait(job["id"])
    done = await gateway.sse(job["id"])
    # After the end: one event, the final job, then the stream ends.
    assert [e.event for e in done] == ["status"]
    assert done[0].data["status"] == "succeeded" and len(done[0].data["outputs"]) == 1
    assert int(done[0].id) > int(mid[0].id)


async def test_another_users_events_are_404_and_bad_ids_are_refused(gateway: Gateway) -> None:
    _, alice = await gateway.create_user("alice")
    _, bob = await gateway.create_user("bob")
    job = (await gateway.generate(txt2img(2), headers=alice)).json()
    resp = await gateway.http.get(f"/v1/jobs/{job['id']}/events", headers=bob)
    assert resp.status_code == 404
    assert resp.headers["content-type"].startswith("application/problem+json")
    resp = await gateway.http.get(f"/v1/jobs/{job['id']}/events", headers={**alice, "Last-Event-ID": "abc"})
    assert resp.status_code == 422
    assert resp.json()["errors"][0]["field"] == "Last-Event-ID"


async def test_previews_are_relayed_only_to_subscribers_that_ask(
    gateway: Gateway, emulator: Emulator
) -> None:
    emulator.config.step_seconds = 0.05
    job = (await gateway.generate(txt2img(6))).json()
    with_previews, without = await asyncio.gather(
        gateway.sse(job["id"], previews=True), gateway.sse(job["id"])
    )
    previews = [e for e in with_previews if e.event == "preview"]
    assert previews, "the emulated sampler sends a preview with each step"
    image = base64.b64decode(previews[0].data["image"])
    assert previews[0].data["content_type"] == "image/jpeg" and image[:3] == b"\xff\xd8\xff"
    assert all(e.id is None for e in previews)  # never stored, so never resumable
    assert not [e for e in without if e.event == "preview"]
    assert with_previews[-1].data["status"] == "succeeded"


# ---- /v1/ws ------------------------------------------------------------------------------


def ws_url(gw: Gateway, query: str = "") -> str:
    return gw.base_url.replace("http://", "ws://") + "/v1/ws" + query


async def ws_collect(ws: Any, job_ids: set[str], timeout: float = 30) -> list[dict]:
    """Frames until every one of `job_ids` has sent its final status."""
    frames: list[dict] = []
    pending = set(job_ids)

    async def run() -> None:
        while pending:
            frame = json.loads(await ws.recv())
            frames.append(frame)
            if frame["event"] == "status" and frame["data"]["status"] in TERMINAL:
                pending.discard(frame["job_id"])

    await asyncio.wait_for(run(), timeout)
    return frames


async def assert_closed_for_policy(ws: Any) -> None:
    try:
        await asyncio.wait_for(ws.recv(), 10)
        raise AssertionError("the socket stayed open")
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == 1008


async def test_ws_streams_all_of_the_callers_jobs_and_no_one_elses(
    gateway: Gateway, emulator: Emulator
) -> None:
    emulator.config.step_seconds = 0.03
    _, alice = await gateway.create_user("alice")
    _, bob = await gateway.create_user("bob")
    alice_key = alice["Authorization"].split()[1]
    async with websockets.connect(ws_url(gateway, f"?api_key={alice_key}")) as ws:
        hello = json.loads(await ws.recv())
        assert hello["event"] == "subscribed"
        bobs = (await gateway.generate(txt2img(3), headers=bob)).json()
        one = (await gateway.generate(txt2img(3, "one"), headers=alice)).json()
        two = (await gateway.generate(txt2img(3, "two"), headers=alice)).json()
        frames = await ws_collect(ws, {one["id"], two["id"]})
    await gateway.wait(bobs["id"], headers=bob)
    assert {f["job_id"] for f in frames} == {one["id"], two["id"]}
    for job_id in (one["id"], two["id"]):
        mine = [f for f in frames if f["job_id"] == job_id]
        kinds = [f["event"] for f in mine]
        assert "progress" in kinds and "output" in kinds
        assert mine[-1]["data"]["status"] == "succeeded"
        # The same ids as the job's SSE stream, in order.
        assert [f["id"] for f in mine] == sorted(f["id"] for f in mine)
        sse_ids = {int(e.id) for e in await gateway.sse(job_id, alice, last_event_id="0") if e.id is not None}
        assert {f["id"] for f in mine} <= sse_ids


async def test_ws_key_as_first_frame_and_previews_when_asked(gateway: Gateway, emulator: Emulator) -> None:
    emulator.config.step_seconds = 0.03
    _, alice = await gateway.create_user("alice")
    async with websockets.connect(ws_url(gateway, "?previews=true")) as ws:
        await ws.send(json.dumps({"api_key": alice["Authorization"].split()[1]}))
        assert json.loads(await ws.recv())["event"] == "subscribed"
        job = (await gateway.generate(txt2img(3), headers=alice)).json()
        frames = await ws_collect(ws, {job["id"]})
    previews = [f for f in frames if f["event"] == "preview"]
    assert previews and base64.b64decode(previews[0]["data"]["image"])[:3] == b"\xff\xd8\xff"
    assert frames[-1]["data"]["status"] == "succeeded"


async def test_an_sse_stream_that_falls_behind_still_gets_every_status_once_and_in_order(
    gateway: Gateway, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Room for one waiting event: the job's end, whose output and status are published together,
    # overflows it however fast the client reads; the rest must come from the event log.
    monkeypatch.setattr(live_bus, "QUEUE_SIZE", 1)
    emulator.config.step_seconds = 0.02
    job = (await gateway.generate(txt2img(6))).json()
    got = await gateway.sse(job["id"])
    assert got[-1].event == "status" and got[-1].data["status"] == "succeeded"
    ids = [int(e.id) for e in got]
    assert ids == sorted(set(ids)), "in order, none twice"
    # Every status and output the log holds reached the stream that fell behind.
    logged = await gateway.sse(job["id"], last_event_id="0")
    wanted = [(int(e.id), e.event) for e in logged if e.event in ("status", "output") and e.id is not None]
    assert wanted and set(wanted) <= {(int(e.id), e.event) for e in got}
    assert "output" in {e.event for e in got}
    assert (
        metric_sum(
            (await gateway.http.get("/metrics", headers=gateway.admin)).text,
            "gateway_live_subscribers_lagged_total",
            scope="job",
        )
        >= 1
    )


async def test_a_ws_client_that_falls_behind_is_told_to_read_its_jobs_again(
    gateway: Gateway, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live_bus, "QUEUE_SIZE", 1)
    emulator.config.step_seconds = 0.02
    _, alice = await gateway.create_user("alice")
    async with websockets.connect(ws_url(gateway, f"?api_key={alice['Authorization'].split()[1]}")) as ws:
        assert json.loads(await ws.recv())["event"] == "subscribed"
        job = (await gateway.generate(txt2img(6), headers=alice)).json()
        frames: list[dict] = []

        async def until_lagged() -> None:
            while not frames or frames[-1]["event"] != "lagged":
                frames.append(json.loads(await ws.recv()))

        await asyncio.wait_for(until_lagged(), 30)
        # The socket stays open and keeps sending after the `lagged` frame.
        after = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert after["job_id"] == job["id"] and after["event"] != "lagged"
    # What was dropped is read again from the job, as the frame asks.
    assert (await gateway.wait(job["id"], headers=alice))["status"] == "succeeded"
    assert (
        metric_sum(
            (await gateway.http.get("/metrics", headers=gateway.admin)).text,
            "gateway_live_subscribers_lagged_total",
            scope="user",
        )
        >= 1
    )


async def test_ws_key_alone_as_first_frame_or_as_bearer_header(gateway: Gateway) -> None:
    alice_id, alice = await gateway.create_user("alice")
    key = alice["Authorization"].split()[1]
    async with websockets.connect(ws_url(gateway)) as ws:
        await ws.send(key)
        hello = json.loads(await ws.recv())
    async with websockets.connect(ws_url(gateway), additional_headers=alice) as ws:
        by_header = json.loads(await ws.recv())
    for frame in (hello, by_header):
        assert frame["event"] == "subscribed" and frame["data"]["user_id"] == alice_id
    async with websockets.connect(
        ws_url(gateway), additional_headers={"Authorization": "Bearer cgw_not_a_key"}
    ) as ws:
        error = json.loads(await ws.recv())
        assert error["event"] == "error" and error["data"]["status"] == 401
        await assert_closed_for_policy(ws)


async def test_ws_bad_key_is_refused_with_policy_violation(gateway: Gateway) -> None:
    for query, first in (
        ("?api_key=cgw_not_a_key", None),
        ("", {"api_key": "cgw_not_a_key"}),
        ("", {"nothing": 1}),
    ):
        async with websockets.connect(ws_url(gateway, query)) as ws:
            if first is not None:
                await ws.send(json.dumps(first))
            error = json.loads(await ws.recv())
            assert error["event"] == "error" and error["data"]["status"] == 401
            await assert_closed_for_policy(ws)


async def test_ws_of_a_disabled_user_is_closed(emulator: Emulator, make_settings, gateway_factory) -> None:  # noqa: ANN001
    gateway = await gateway_factory(
        make_settings(comfyui_urls=[emulator.base_url], live_auth_check_seconds=0.2)
    )
    user_id, alice = await gateway.create_user("alice")
    async with websockets.connect(ws_url(gateway, f"?api_key={alice['Authorization'].split()[1]}")) as ws:
        assert json.loads(await ws.recv())["event"] == "subscribed"
        resp = await gateway.http.patch(
            f"/v1/admin/users/{user_id}", json={"disabled": True}, headers=gateway.admin
        )
        assert resp.status_code == 200
        error = json.loads(await asyncio.wait_for(ws.recv(), 20))
        assert error["event"] == "error" and error["data"]["status"] == 401
        await assert_closed_for_policy(ws)


# ---- several replicas ----------------------------------------------------------------------


async def test_a_replica_without_the_dispatcher_streams_jobs_run_by_another(
    db_url: str,
    emulator: Emulator,
    make_settings,
    gateway_factory,  # noqa: ANN001
) -> None:
    if db_url.startswith("sqlite"):
        import pytest

        pytest.skip("several replicas need PostgreSQL (NOTIFY); SQLite is one process")
    emulator.config.step_seconds = 0.05
    runner = await gateway_factory(make_settings(comfyui_urls=[emulator.base_url]))
    await runner.wait_ready()
    api_only = await gateway_factory(make_settings(comfyui_urls=[emulator.base_url], run_dispatcher=False))
    relay = api_only.state.event_relay
    await asyncio.wait_for(relay.listening.wait(), 10)
    _, alice = await api_only.create_user("alice")
    alice_key = alice["Authorization"].split()[1]
    async with websockets.connect(ws_url(api_only, f"?api_key={alice_key}")) as ws:
        assert json.loads(await ws.recv())["event"] == "subscribed"
        job = (await api_only.generate(txt2img(8), headers=alice)).json()
        events, frames = await asyncio.gather(api_only.sse(job["id"], alice), ws_collect(ws, {job["id"]}))
    kinds = [e.event for e in events]
    assert "progress" in kinds and "output" in kinds
    assert events[-1].data["status"] == "succeeded"
    # The socket heard every event from the job's first (`queued`), in order, the stream's among them.
    frame_ids = [f["id"] for f in frames]
    assert frames[0]["data"]["status"] == "queued" and frame_ids == list(range(1, len(frames) + 1))
    assert {int(e.id) for e in events} <= set(frame_ids)
    # Prefer: wait on the replica that does not run the job is woken by the other's events too.
    resp = await api_only.generate(txt2img(2), headers={**alice, "Prefer": "wait=30"})
    assert resp.status_code == 200 and resp.json()["status"] == "succeeded"


# ---- the log's bound, keep-alive ---------------------------------------------------------------


async def test_the_event_log_keeps_a_bounded_tail_of_progress_and_every_status(
    emulator: Emulator,
    make_settings,
    gateway_factory,  # noqa: ANN001
) -> None:
    gateway = await gateway_factory(
        make_settings(
            comfyui_urls=[emulator.base_url], event_log_max_progress=3, progress_events_per_second=100
        )
    )
    await gateway.wait_ready()
    emulator.config.step_seconds = 0.03
    job = (await gateway.generate(txt2img(25))).json()
    live = await gateway.sse(job["id"], last_event_id="0")
    assert sum(e.event == "progress" for e in live) > 3  # live subscribers got them all
    now, *replay = await gateway.sse(job["id"], last_event_id="0")
    assert now.id is None and now.data["status"] == "succeeded"
    progress = [e for e in replay if e.event == "progress"]
    assert 1 <= len(progress) <= 3
    assert progress[-1].data == {"value": 25, "max": 25, "node": "3"}  # the newest are the ones kept
    statuses = [e.data["status"] for e in replay if e.event == "status"]
    assert statuses[0] == "queued" and "running" in statuses and statuses[-1] == "succeeded"
    assert [e.event for e in replay].count("output") == 1
    assert ids(replay) == sorted(ids(replay))


async def test_a_quiet_stream_gets_keep_alive_comments(idle_gateway) -> None:  # noqa: ANN001
    gateway: Gateway = await idle_gateway(sse_ping_seconds=0.2)
    job = (await gateway.generate(txt2img(2))).json()  # no dispatcher: it stays queued, nothing happens
    comments = 0
    async with gateway.http.stream("GET", f"/v1/jobs/{job['id']}/events", headers=gateway.admin) as resp:
        async for line in resp.aiter_lines():
            if line.startswith(":"):
                comments += 1
                if comments == 2:
                    break
    assert comments == 2


async def test_an_sse_stream_of_a_revoked_key_ends(idle_gateway) -> None:  # noqa: ANN001
    gateway: Gateway = await idle_gateway(live_auth_check_seconds=0.2)
    user_id, alice = await gateway.create_user("alice")
    job = (await gateway.generate(txt2img(2), headers=alice)).json()  # stays queued: the stream would go on

    opened = asyncio.Event()

    def note_open(events: list[SseEvent]) -> bool:
        opened.set()
        return False  # read on

    reading = asyncio.create_task(gateway.sse(job["id"], alice, stop=note_open))
    await asyncio.wait_for(opened.wait(), 20)  # the stream is open (its first event came)
    keys = (await gateway.http.get(f"/v1/admin/users/{user_id}/keys", headers=gateway.admin)).json()
    key_id = (keys["items"] if isinstance(keys, dict) else keys)[0]["id"]
    assert (
        await gateway.http.delete(f"/v1/admin/users/{user_id}/keys/{key_id}", headers=gateway.admin)
    ).status_code in (200, 204)
    events = await asyncio.wait_for(reading, 20)  # the server ended it
    assert events and events[0].event == "status" and events[0].data["status"] == "queued"
    resp = await gateway.http.get(f"/v1/jobs/{job['id']}/events", headers=alice)
    assert resp.status_code == 401
