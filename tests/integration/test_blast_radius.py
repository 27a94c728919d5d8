"""Blast radius: a hostile user sends everything the hostile review found, at once, while another
user submits ordinary jobs. The ordinary jobs run as they would beside any busy user (their share
of the backend, not a place behind the hostile user's work), and nothing answers a 5xx.

The bound is in jobs, not seconds (the suite asserts no timings): between the ordinary user's
arrival and its first job's dispatch, at most the hostile jobs one round already had under way go
first, as tests/integration/test_fairness.py shows for an ordinary busy user.
"""

from __future__ import annotations

import asyncio
import io

import httpx
import websockets
from PIL import Image
from sqlalchemy import func, select

from app.db.models import Job

PLENTY = {"max_queued": 10_000, "rate_per_minute": 100_000, "jobs_per_day": 100_000}
JOB = {"template": "txt2img", "params": {"prompt": "a", "steps": 8}}  # about 80 ms on the emulator


def _deep(depth: int, leaf: object) -> object:
    for _ in range(depth):
        leaf = {"a": leaf}
    return leaf


def _gif_bomb(frames: int) -> bytes:
    """An animated GIF of more frames than GATEWAY_MAX_IMAGE_FRAMES allows (tiny, so cheap to make).
    Each frame differs from the last (Pillow merges equal ones)."""
    images = []
    for i in range(frames):
        frame = Image.new("L", (16, 16), 0)
        frame.putpixel((i % 16, i // 16 % 16), 255)
        images.append(frame)
    out = io.BytesIO()
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:], duration=10, loop=0)
    return out.getvalue()


def _raw(nodes: dict) -> dict:
    return {"workflow": nodes}


def _save(prefix: str) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


async def _hostile(gw, headers: dict[str, str], backend: str, unservable: list[str]) -> list[tuple[str, int]]:  # noqa: ANN001
    """Everything at once; returns (what, status) of every answer, and the ids of the jobs whose
    outputs ComfyUI will not serve in `unservable`."""
    http = gw.http
    json_headers = {**headers, "Content-Type": "application/json"}
    upload = (
        await http.post("/v1/uploads", files={"file": ("a.png", _png(), "image/png")}, headers=headers)
    ).json()["id"]

    async def raw_body(what: str, text: str) -> tuple[str, int]:
        return what, (
            await http.post("/v1/generate", content=text.encode(), headers=json_headers)
        ).status_code

    async def post(what: str, body: dict) -> tuple[str, int]:
        resp = await http.post("/v1/generate", json=body, headers=headers)
        if what == "a..b prefix" and resp.status_code == 202:
            unservable.append(resp.json()["id"])
        return what, resp.status_code

    async def get(what: str, path: str, hdrs: dict[str, str] | None = None) -> tuple[str, int]:
        return what, (await http.get(path, headers=hdrs if hdrs is not None else headers)).status_code

    async def gif() -> tuple[str, int]:
        resp = await http.post(
            "/v1/uploads", files={"file": ("b.gif", _gif_bomb(150), "image/gif")}, headers=headers
        )
        return "gif bomb", resp.status_code

    async def ws_surrogate() -> tuple[str, int]:
        async with websockets.connect(gw.base_url.replace("http", "ws", 1) + "/v1/ws") as ws:
            # The key as a JSON string escaping a lone surrogate (no UTF-8 frame can carry one raw).
            await ws.send('"\\ud800"')
            try:
                await ws.recv()
                await ws.recv()
            except websockets.ConnectionClosed as closed:
                return "ws surrogate", closed.rcvd.code if closed.rcvd else 1006
        return "ws surrogate", 0

    deep_upload = _deep(600, f"upload:{upload}")
    tasks = [
        raw_body("surrogate param", '{"template":"txt2img","params":{"prompt":"\\ud800"}}'),
        raw_body("NaN metadata", '{"template":"txt2img","params":{"prompt":"a"},"metadata":{"x":NaN}}'),
        raw_body("huge integer", '{"template":"txt2img","params":{"prompt":"a","seed":' + "9" * 30 + "}}"),
        post("deep metadata", {**JOB, "metadata": _deep(300, 1)}),
        post("deep raw workflow", _raw({"1": {"class_type": "LoadImage", "inputs": {"image": deep_upload}}})),
        post(
            "server path",
            _raw({"1": {"class_type": "VHS_LoadVideoPath", "inputs": {"video": "/etc/passwd"}}}),
        ),
        post("webhook to a backend", {**JOB, "webhook": {"url": f"{backend}/interrupt"}}),
        post(
            "image url to a backend",
            {"template": "img2img", "params": {"prompt": "a", "image": f"{backend}/view?filename=x.png"}},
        ),
        post(
            "fullwidth host",
            {
                "template": "img2img",
                "params": {"prompt": "a", "image": "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/x.png"},
            },
        ),
        get("cursor overflow", "/v1/jobs?cursor=MDAwMS0wMS0wMVQwMDowMDowMCswMTowMHx4"),
        get("bad signature", "/v1/jobs/x/outputs/y?expires=9999999999&signature=%C3%A9", {}),
        get("metrics without a key", "/metrics", {}),
        gif(),
        ws_surrogate(),
    ]
    # Jobs that run: prefixes ComfyUI's /view refuses, and a backlog of valid long work.
    tasks += [post("a..b prefix", _raw(_save("a..b"))) for _ in range(2)]
    tasks += [post("backlog", JOB) for _ in range(40)]
    return list(await asyncio.gather(*tasks))


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(out, format="PNG")
    return out.getvalue()


async def test_a_hostile_user_cannot_slow_or_break_another(emulator, make_settings, gateway_factory) -> None:  # noqa: ANN001
    gw = await gateway_factory(make_settings(comfyui_urls=[emulator.base_url], max_live_streams_per_user=4))
    await gw.wait_ready()
    m_id, mallory = await gw.create_user("mallory", limits={**PLENTY, "allow_raw_workflows": True})
    o_id, olive = await gw.create_user("olive", limits=PLENTY)

    unservable: list[str] = []
    hostile = asyncio.create_task(_hostile(gw, mallory, emulator.base_url, unservable))

    # Olive arrives once Mallory's work occupies the backend.
    async def dispatched(user_id: str) -> int:
        async with gw.state.sessionmaker() as session:
            stmt = select(func.count()).where(Job.user_id == user_id, Job.dispatched_at.is_not(None))
            return (await session.execute(stmt)).scalar_one()

    while await dispatched(m_id) < 5:
        await asyncio.sleep(0.01)
    # Mallory also holds open more live streams than she may (the rest are refused, not queued).
    streams = httpx.AsyncClient(base_url=gw.base_url, timeout=30)
    any_job = (await gw.http.get("/v1/jobs?limit=1", headers=mallory)).json()["items"][0]["id"]
    opened = [
        await streams.send(
            streams.build_request("GET", f"/v1/jobs/{any_job}/events", headers=mallory), stream=True
        )
        for _ in range(6)
    ]
    stream_statuses = [r.status_code for r in opened]

    submitted = await asyncio.gather(*(gw.generate(JOB, headers=olive) for _ in range(5)))
    assert all(r.status_code == 202 for r in submitted)
    finals = [await gw.wait(r.json()["id"], headers=olive, timeout=60) for r in submitted]
    answers = await hostile
    for r in opened:
        await r.aclose()
    await streams.aclose()

    # Olive's jobs are untouched by Mallory's.
    assert [f["status"] for f in finals] == ["succeeded"] * 5
    # Nothing Mallory sent got a 5xx, and what must be refused was.
    http_answers = [(what, status) for what, status in answers if what != "ws surrogate"]
    assert all(status < 500 for _, status in http_answers), [a for a in http_answers if a[1] >= 500]
    refused = {what: status for what, status in http_answers if what not in ("a..b prefix", "backlog")}
    assert all(400 <= status < 500 for status in refused.values()), [
        i for i in refused.items() if not 400 <= i[1] < 500
    ]
    # The socket's close code: refused for policy (1008), not an unhandled error (1006).
    assert dict(answers)["ws surrogate"] == 1008
    assert stream_statuses.count(429) == 2 and stream_statuses.count(200) == 4, stream_statuses

    async with gw.state.sessionmaker() as session:
        o_rows = (await session.execute(select(Job).where(Job.user_id == o_id))).scalars().all()
        arrived = min(j.created_at for j in o_rows)
        first = min(j.dispatched_at for j in o_rows)
        last = max(j.dispatched_at for j in o_rows)
        ahead = (
            await session.execute(
                select(func.count()).where(
                    Job.user_id == m_id, Job.dispatched_at > arrived, Job.dispatched_at < first
                )
            )
        ).scalar_one()
        during = (
            await session.execute(
                select(func.count()).where(
                    Job.user_id == m_id, Job.dispatched_at > first, Job.dispatched_at < last
                )
            )
        ).scalar_one()
    # Olive's first job takes the next free slot (a round under way and its reserve may go first),
    # and her five are interleaved one for one with Mallory's backlog, not queued behind it.
    assert ahead <= 2, ahead
    assert during <= 5, during
    # The outputs ComfyUI refused to serve failed Mallory's own jobs, with a documented type.
    assert len(unservable) == 2
    for job_id in unservable:
        ended = await gw.wait(job_id, headers=mallory, timeout=60)
        assert ended["status"] == "failed" and ended["error"]["type"] == "output_missing", ended
    # The backend never got an interrupt from a webhook or anything else of hers.
    assert emulator.interrupts == []
