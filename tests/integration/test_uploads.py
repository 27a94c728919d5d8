"""Uploads and image params: stored, sniffed, owned; staged onto the backend that runs the job."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from PIL import Image
from sqlalchemy import func, select

from app.db.models import Job, Upload


def png(
    width: int = 32, height: int = 24, color: tuple[int, int, int] = (200, 30, 40), noise: bool = False
) -> bytes:
    img = Image.new("RGB", (width, height), color)
    if noise:  # incompressible, so the file is as large as its pixels
        img = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def stored_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


async def upload_count(gw) -> int:  # noqa: ANN001
    async with gw.state.sessionmaker() as session:
        return (await session.execute(select(func.count()).select_from(Upload))).scalar_one()


async def upload(
    gw, data: bytes, headers: dict[str, str], filename: str = "input.png", ctype: str = "image/png"
):  # noqa: ANN001, ANN201
    return await gw.http.post("/v1/uploads", files={"file": (filename, data, ctype)}, headers=headers)


def img2img(image: str, **params: object) -> dict:
    return {"template": "img2img", "params": {"image": image, "prompt": "a lighthouse", "steps": 2, **params}}


async def test_upload_is_sniffed_hashed_and_owned(idle_gateway) -> None:  # noqa: ANN001
    gw = await idle_gateway()
    _, alice = await gw.create_user("alice")
    _, bob = await gw.create_user("bob")
    data = png(40, 30)
    # The client's word on the type is not taken: the bytes say PNG.
    resp = await upload(gw, data, alice, filename="../../etc/My Photo.jpeg", ctype="text/plain")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["content_type"] == "image/png"
    assert (body["width"], body["height"]) == (40, 30)
    assert body["size"] == len(data)
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["filename"] == "My Photo.png"
    assert body["created_at"].endswith("Z")

    mine = await gw.http.get(f"/v1/uploads/{body['id']}", headers=alice)
    assert mine.status_code == 200 and mine.json() == body
    theirs = await gw.http.get(f"/v1/uploads/{body['id']}", headers=bob)
    assert theirs.status_code == 404
    assert (await gw.http.delete(f"/v1/uploads/{body['id']}", headers=bob)).status_code == 404
    assert (await gw.http.get(f"/v1/uploads/{body['id']}")).status_code == 401

    assert (await gw.http.delete(f"/v1/uploads/{body['id']}", headers=alice)).status_code == 204
    assert (await gw.http.get(f"/v1/uploads/{body['id']}", headers=alice)).status_code == 404
    assert stored_files(gw.state.settings.storage_dir) == []


async def test_a_file_that_is_not_an_image_is_refused_and_nothing_is_kept(idle_gateway) -> None:  # noqa: ANN001
    gw = await idle_gateway()
    _, alice = await gw.create_user("alice")
    resp = await upload(gw, b"%PDF-1.4 not an image at all" * 10, alice, filename="x.png")
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert await upload_count(gw) == 0
    assert stored_files(gw.state.settings.storage_dir) == []
    # No field named `file`: a clear 422 too, not a 500.
    resp = await gw.http.post("/v1/uploads", files={"image": ("x.png", png(), "image/png")}, headers=alice)
    assert resp.status_code == 422


async def test_an_oversized_upload_is_413_and_leaves_nothing(idle_gateway) -> None:  # noqa: ANN001
    gw = await idle_gateway(max_upload_bytes=20_000)
    _, alice = await gw.create_user("alice")
    big = png(200, 200, noise=True)  # ~120 kB of incompressible pixels
    assert len(big) > 100_000
    resp = await upload(gw, big, alice)
    assert resp.status_code == 413, resp.text
    assert resp.headers["content-type"] == "application/problem+json"

    # The same without a Content-Length (chunked): cut off while it streams, not after.
    boundary = "xyzBOUNDARY"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    async def body():  # noqa: ANN202
        yield head
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]
        yield f"\r\n--{boundary}--\r\n".encode()

    resp = await gw.http.post(
        "/v1/uploads",
        content=body(),
        headers={**alice, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert resp.status_code == 413, resp.text

    # A file just under the limit but over it once the framing is counted is refused by the route.
    assert await upload_count(gw) == 0
    assert stored_files(gw.state.settings.storage_dir) == []
    small = png(20, 20)
    assert (await upload(gw, small, alice)).status_code == 201


async def test_img2img_with_an_upload_and_a_data_uri_stages_each_input(gateway, emulator) -> None:  # noqa: ANN001
    _, alice = await gateway.create_user("alice")
    data = png(64, 48, (10, 200, 10))
    up = (await upload(gateway, data, alice)).json()
    by_upload = (await gateway.generate(img2img(up["id"]), alice)).json()

    other = png(16, 16, (0, 0, 250))
    uri = "data:image/png;base64," + base64.b64encode(other).decode()
    created = await gateway.generate(img2img(uri), alice)
    assert created.status_code == 202, created.text
    by_uri = created.json()
    # The job keeps a reference, not the whole data URI: an upload of the caller's, reusable.
    made = by_uri["params"]["image"]
    assert not made.startswith("data:")
    again = await gateway.http.get(f"/v1/uploads/{made}", headers=alice)
    assert again.status_code == 200 and again.json()["sha256"] == hashlib.sha256(other).hexdigest()

    for job, source in ((by_upload, data), (by_uri, other)):
        final = await gateway.wait(job["id"], headers=alice)
        assert final["status"] == "succeeded", final
        assert len(final["outputs"]) == 1
        staged = emulator.input_dir / f"gw_{job['id']}_image.png"
        assert staged.read_bytes() == source


async def test_bad_image_params_are_422_and_store_nothing(gateway) -> None:  # noqa: ANN001
    _, alice = await gateway.create_user("alice")
    _, bob = await gateway.create_user("bob")
    bobs = (await upload(gateway, png(), bob)).json()
    before = await upload_count(gateway)
    cases = {
        "another user's upload": bobs["id"],
        "unknown upload": "2f1c8a52-7f43-4c2e-9d4c-1f0e2a3b4c5d",
        "not a reference": "input.png",
        "data uri of text": "data:image/png;base64," + base64.b64encode(b"hello, not an image").decode(),
        "data uri not base64": "data:image/png;base64,@@@@",
    }
    answers = {}
    for name, value in cases.items():
        resp = await gateway.generate(img2img(value), alice)
        answers[name] = resp.status_code
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json()["errors"][0]["param"] == "image", (name, resp.text)
    assert answers == {name: 422 for name in cases}
    # Another user's upload answers exactly as an unknown one: nothing tells it exists.
    other = (await gateway.generate(img2img(bobs["id"]), alice)).json()
    unknown = (await gateway.generate(img2img(cases["unknown upload"]), alice)).json()
    assert other["errors"][0]["message"] == unknown["errors"][0]["message"]
    assert await upload_count(gateway) == before
    async with gateway.state.sessionmaker() as session:
        assert (await session.execute(select(func.count()).select_from(Job))).scalar_one() == 0


async def test_two_users_uploading_the_same_file_name_never_collide(gateway, emulator) -> None:  # noqa: ANN001
    users = [await gateway.create_user(name) for name in ("alice", "bob")]
    images = [png(32, 32, (255, 0, 0)), png(32, 32, (0, 0, 255))]
    ups = await asyncio.gather(
        *(upload(gateway, img, h, filename="input.png") for (_, h), img in zip(users, images, strict=True))
    )
    ids = [u.json()["id"] for u in ups]
    jobs = await asyncio.gather(
        *(gateway.generate(img2img(i), h) for i, (_, h) in zip(ids, users, strict=True))
    )
    for job, (_, headers), image in zip(jobs, users, images, strict=True):
        final = await gateway.wait(job.json()["id"], headers=headers)
        assert final["status"] == "succeeded", final
        # Each job's backend input is its own file, with its own user's bytes.
        assert (emulator.input_dir / f"gw_{final['id']}_image.png").read_bytes() == image
    assert not list(emulator.input_dir.glob("input*.png"))


async def test_a_job_moved_to_another_backend_is_staged_there_again(
    three_backends, make_settings, gateway_factory
) -> None:  # noqa: ANN001
    victim, *others = three_backends
    gw = await gateway_factory(
        make_settings(comfyui_urls=[e.base_url for e in three_backends], failover_grace_seconds=1.0)
    )
    await gw.wait_ready()
    _, alice = await gw.create_user("alice", limits={"max_running": 100})
    data = png(24, 24, (1, 2, 3))
    up = (await upload(gw, data, alice)).json()
    ids = [(await gw.generate(img2img(up["id"], steps=10), alice)).json()["id"] for _ in range(9)]
    # Wait until the victim has some of them, then kill it mid-job.
    while not victim.prompts_received:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    await victim.kill()
    finals = [await gw.wait(j, timeout=60, headers=alice) for j in ids]
    assert [f["status"] for f in finals] == ["succeeded"] * 9
    async with gw.state.sessionmaker() as session:
        rows = (await session.execute(select(Job).where(Job.id.in_(ids)))).scalars().all()
    moved = [r for r in rows if r.attempts > 1]
    assert moved, "the victim had jobs in flight; they must have moved"
    for row in moved:
        assert (victim.input_dir / f"gw_{row.id}_image.png").read_bytes() == data  # staged on the first
        finished_on = next(e for e in others if e.base_url == row.backend)
        assert (finished_on.input_dir / f"gw_{row.id}_image.png").read_bytes() == data  # and again


@pytest.fixture
async def image_server() -> AsyncIterator[tuple[str, dict[str, bytes]]]:
    """A local HTTP server that image params may name: /<name> serves files[name]; /moved redirects."""
    files: dict[str, bytes] = {}

    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == "moved":
            raise web.HTTPFound("/a.png")
        if name not in files:
            raise web.HTTPNotFound()
        return web.Response(body=files[name], content_type="image/png")

    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001
    yield f"http://127.0.0.1:{port}", files
    await runner.cleanup()


async def test_img2img_with_an_image_url_on_an_allow_listed_host(
    image_server, emulator, make_settings, gateway_factory
) -> None:  # noqa: ANN001
    base, files = image_server
    files["a.png"] = png(30, 20, (9, 9, 9))
    files["big.png"] = png(200, 200, noise=True)
    files["text.png"] = b"just text"
    gw = await gateway_factory(
        make_settings(
            comfyui_urls=[emulator.base_url], outbound_allowlist=["127.0.0.1"], max_upload_bytes=50_000
        )
    )
    await gw.wait_ready()
    created = await gw.generate(img2img(f"{base}/a.png"))
    assert created.status_code == 202, created.text
    job = created.json()
    final = await gw.wait(job["id"])
    assert final["status"] == "succeeded", final
    assert (emulator.input_dir / f"gw_{job['id']}_image.png").read_bytes() == files["a.png"]
    made = await gw.http.get(f"/v1/uploads/{job['params']['image']}", headers=gw.admin)
    assert made.json()["width"] == 30 and made.json()["filename"] == "a.png"

    for url, why in (
        (f"{base}/missing.png", "404"),
        (f"{base}/moved", "redirect"),
        (f"{base}/big.png", "larger than 50000"),
        (f"{base}/text.png", "not an image"),
        ("http://10.1.2.3/a.png", "allow-listed"),
        ("ftp://example.com/a.png", "names no upload"),
    ):
        resp = await gw.generate(img2img(url))
        assert resp.status_code == 422, (url, resp.text)
        assert why in resp.json()["errors"][0]["message"], (url, resp.text)


async def test_image_urls_to_private_addresses_are_refused_unless_allow_listed(
    image_server, idle_gateway
) -> None:  # noqa: ANN001
    base, files = image_server
    files["a.png"] = png()
    gw = await idle_gateway()  # empty GATEWAY_OUTBOUND_ALLOWLIST
    resp = await gw.generate(img2img(f"{base}/a.png"))
    assert resp.status_code == 422
    assert "loopback" in resp.json()["errors"][0]["message"]
    assert await upload_count(gw) == 0


async def test_a_job_whose_upload_was_deleted_before_it_ran_fails_with_input_missing(
    emulator, make_settings, gateway_factory
) -> None:  # noqa: ANN001
    # One gateway takes the job without running it; the upload is then deleted; a second gateway
    # on the same database runs the dispatcher.
    api = await gateway_factory(make_settings(comfyui_urls=["http://127.0.0.1:9"], run_dispatcher=False))
    up = (await upload(api, png(), api.admin)).json()
    job = (await api.generate(img2img(up["id"]))).json()
    assert (await api.http.delete(f"/v1/uploads/{up['id']}", headers=api.admin)).status_code == 204
    worker = await gateway_factory(make_settings(comfyui_urls=[emulator.base_url]))
    final = await worker.wait(job["id"])
    assert final["status"] == "failed"
    assert final["error"]["type"] == "input_missing"
    assert not emulator.prompts_received


INPAINT_TEMPLATE = {
    "description": "The image, and the same image with the mask's alpha (ComfyUI's /upload/mask)",
    "workflow": {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "masked"}},
        "4": {"class_type": "MaskPreview", "inputs": {"mask": ["2", 1]}},
    },
    "params": {
        "image": {"type": "image", "required": True, "bind": ["1.inputs.image"]},
        "mask": {"type": "image", "required": True, "mask_of": "image", "bind": ["2.inputs.image"]},
    },
    "outputs": ["3"],
}


async def test_a_mask_param_is_staged_onto_its_image_with_upload_mask(gateway, emulator) -> None:  # noqa: ANN001
    assert (
        await gateway.http.put("/v1/templates/inpaint", json=INPAINT_TEMPLATE, headers=gateway.admin)
    ).status_code in (200, 201)
    image = png(16, 16, (10, 120, 230))
    mask_img = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    mask_img.paste((0, 0, 0, 255), (0, 0, 8, 16))  # left half opaque
    buf = io.BytesIO()
    mask_img.save(buf, format="PNG")
    image_id = (await upload(gateway, image, gateway.admin)).json()["id"]
    mask_id = (await upload(gateway, buf.getvalue(), gateway.admin, filename="mask.png")).json()["id"]
    job = (
        await gateway.generate({"template": "inpaint", "params": {"image": image_id, "mask": mask_id}})
    ).json()
    final = await gateway.wait(job["id"])
    assert final["status"] == "succeeded", final
    with Image.open(emulator.input_dir / f"gw_{job['id']}_mask.png") as staged:
        rgba = staged.convert("RGBA")
        # The original's colour, with the mask's alpha.
        assert rgba.getpixel((2, 2)) == (10, 120, 230, 255)
        assert rgba.getpixel((12, 2)) == (10, 120, 230, 0)


async def test_mask_of_must_name_another_image_param(idle_gateway) -> None:  # noqa: ANN001
    gw = await idle_gateway()
    bad = {
        **INPAINT_TEMPLATE,
        "params": {
            **INPAINT_TEMPLATE["params"],
            "mask": {**INPAINT_TEMPLATE["params"]["mask"], "mask_of": "nothing"},
        },
    }
    resp = await gw.http.put("/v1/templates/bad_inpaint", json=bad, headers=gw.admin)
    assert resp.status_code == 422 and "mask_of" in resp.text


async def test_a_slow_upload_to_the_backend_holds_up_no_other_job(
    emulator, make_settings, gateway_factory
) -> None:  # noqa: ANN001
    gw = await gateway_factory(make_settings(comfyui_urls=[emulator.base_url], backend_timeout_seconds=60))
    await gw.wait_ready()
    up = (await upload(gw, png(), gw.admin)).json()
    # Hangs for several times what the other job needs to run.
    emulator.slow_responses("/upload", 5)
    staged = (await gw.generate(img2img(up["id"]))).json()
    # Wait until the dispatcher took it and is uploading its input.
    async with gw.state.sessionmaker() as session:
        while (row := await session.get(Job, staged["id"], populate_existing=True)).prompt_id is None:
            await asyncio.sleep(0.02)
    blur = (await gw.generate({"template": "blur", "params": {}})).json()
    done = await gw.wait(blur["id"], timeout=60)
    assert done["status"] == "succeeded"
    # The other job went through while the upload still hung: its prompt was not even sent yet.
    assert row.prompt_id not in emulator.prompts_received
    assert (await gw.job(staged["id"]))["status"] == "queued"
    emulator.slow_responses("/upload", 0)
    assert (await gw.wait(staged["id"], timeout=60))["status"] == "succeeded"
