"""Outputs of every kind, how they are served, and how they are deleted (on request, by retention)."""

from __future__ import annotations

import io
import wave
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import func, select

from app.db.models import Job, Output, Upload
from app.db.types import utcnow
from comfy_emulator import Emulator, EmulatorConfig
from comfy_emulator.media import AUDIO_NODE_DEFINITIONS, VIDEO_NODE_DEFINITIONS

from .test_uploads import png, upload

MEDIA_TEMPLATE = {
    "description": "An animated WEBP, a GIF video, a sound, a text and a preview",
    "workflow": {
        "0": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 12, "batch_size": 1, "color": 255}},
        "10": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 12, "batch_size": 1, "color": 16711680}},
        "1": {"class_type": "ImageBatch", "inputs": {"image1": ["0", 0], "image2": ["10", 0]}},
        "2": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["1", 0], "filename_prefix": "anim", "fps": 6.0,
                                                          "lossless": True, "quality": 80, "method": "default"}},
        "3": {"class_type": "PrimitiveString", "inputs": {"value": "hello"}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
        "5": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "6": {"class_type": "EmptyLatentAudio", "inputs": {"seconds": 1.0, "batch_size": 1}},
        "7": {"class_type": "VAEDecodeAudio", "inputs": {"samples": ["6", 0], "vae": ["5", 2]}},
        "8": {"class_type": "SaveAudio", "inputs": {"audio": ["7", 0], "filename_prefix": "audio/ComfyUI"}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "11": {"class_type": "VHS_VideoCombine", "inputs": {"images": ["1", 0], "frame_rate": 6, "loop_count": 0,
                                                            "filename_prefix": "clip", "format": "image/gif",
                                                            "pingpong": False, "save_output": True}},
    },
    "params": {"text": {"type": "string", "default": "hello", "bind": ["3.inputs.value"]}},
}  # fmt: skip


@pytest.fixture
async def media_emulator() -> AsyncIterator[Emulator]:
    emu = Emulator(
        EmulatorConfig(step_seconds=0.01, extra_nodes={**AUDIO_NODE_DEFINITIONS, **VIDEO_NODE_DEFINITIONS})
    )
    await emu.start(host="127.0.0.1", port=0)
    yield emu
    await emu.stop()


async def test_video_audio_and_text_outputs_with_their_types(
    media_emulator, make_settings, gateway_factory
) -> None:  # noqa: ANN001
    gw = await gateway_factory(make_settings(comfyui_urls=[media_emulator.base_url]))
    await gw.wait_ready()
    for name, keep_temp in (("media", False), ("media_previews", True)):
        resp = await gw.http.put(
            f"/v1/templates/{name}", json={**MEDIA_TEMPLATE, "keep_temp": keep_temp}, headers=gw.admin
        )
        assert resp.status_code in (200, 201), resp.text

    job = (await gw.generate({"template": "media", "params": {"text": "héllo, wörld"}})).json()
    final = await gw.wait(job["id"])
    assert final["status"] == "succeeded", final
    by_node = {o["node_id"]: o for o in final["outputs"]}
    assert set(by_node) == {"2", "4", "8", "11"}  # the PreviewImage's temp file is not kept
    assert (by_node["2"]["kind"], by_node["2"]["content_type"]) == ("images", "image/webp")
    assert (by_node["8"]["kind"], by_node["8"]["content_type"]) == ("audio", "audio/wav")
    assert (by_node["4"]["kind"], by_node["4"]["content_type"]) == ("text", "text/plain; charset=utf-8")
    assert (by_node["11"]["kind"], by_node["11"]["content_type"]) == ("gifs", "image/gif")

    webp = await gw.http.get(by_node["2"]["url"])
    assert webp.headers["content-type"] == "image/webp"
    with Image.open(io.BytesIO(webp.content)) as img:
        assert img.format == "WEBP" and img.size == (16, 12) and img.n_frames == 2
    clip = await gw.http.get(by_node["11"]["url"])
    assert clip.headers["content-type"] == "image/gif"
    with Image.open(io.BytesIO(clip.content)) as img:
        assert img.format == "GIF" and img.size == (16, 12) and img.n_frames == 2
    sound = await gw.http.get(by_node["8"]["url"])
    with wave.open(io.BytesIO(sound.content)) as wav:
        assert wav.getnframes() / wav.getframerate() == 1.0
    text = await gw.http.get(by_node["4"]["url"])
    assert text.headers["content-type"].startswith("text/plain")
    assert text.content.decode("utf-8") == "héllo, wörld"

    with_previews = await gw.wait(
        (await gw.generate({"template": "media_previews", "params": {}})).json()["id"]
    )
    previews = [o for o in with_previews["outputs"] if o["node_id"] == "9"]
    assert len(previews) == 2 and all(o["content_type"] == "image/png" for o in previews)


async def finished_blur(gw, headers=None) -> dict:  # noqa: ANN001
    job = (await gw.generate({"template": "blur", "params": {"width": 64, "height": 48}}, headers)).json()
    final = await gw.wait(job["id"], headers=headers)
    assert final["status"] == "succeeded", final
    return final


async def test_range_etag_and_headers(gateway) -> None:  # noqa: ANN001
    final = await finished_blur(gateway)
    out = final["outputs"][0]
    full = await gateway.http.get(out["url"])
    assert full.status_code == 200 and len(full.content) == out["size"]
    assert full.headers["etag"] == f'"{out["sha256"]}"'
    assert "immutable" in full.headers["cache-control"] and "max-age=" in full.headers["cache-control"]
    disposition = full.headers["content-disposition"]
    assert disposition.startswith("inline; filename=") and "filename*=UTF-8''" in disposition

    part = await gateway.http.get(out["url"], headers={"Range": "bytes=10-19"})
    assert part.status_code == 206
    assert part.content == full.content[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{out['size']}"
    tail = await gateway.http.get(out["url"], headers={"Range": "bytes=-5"})
    assert tail.status_code == 206 and tail.content == full.content[-5:]
    beyond = await gateway.http.get(out["url"], headers={"Range": f"bytes={out['size'] + 10}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{out['size']}"

    cached = await gateway.http.get(out["url"], headers={"If-None-Match": full.headers["etag"]})
    assert cached.status_code == 304 and cached.content == b""
    changed = await gateway.http.get(out["url"], headers={"If-None-Match": '"something-else"'})
    assert changed.status_code == 200

    # With the owner's key instead of a signature: private, revalidated.
    bare = out["url"].split("?")[0]
    keyed = await gateway.http.get(bare, headers=gateway.admin)
    assert keyed.status_code == 200 and keyed.headers["cache-control"] == "private, no-cache"


async def test_image_outputs_convert_to_webp_and_jpeg(gateway) -> None:  # noqa: ANN001
    out = (await finished_blur(gateway))["outputs"][0]
    for fmt, pil_name, ctype in (("webp", "WEBP", "image/webp"), ("jpeg", "JPEG", "image/jpeg")):
        resp = await gateway.http.get(out["url"] + f"&format={fmt}&quality=60")
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"] == ctype
        with Image.open(io.BytesIO(resp.content)) as img:
            assert img.format == pil_name and img.size == (64, 48)
        again = await gateway.http.get(
            out["url"] + f"&format={fmt}&quality=60", headers={"If-None-Match": resp.headers["etag"]}
        )
        assert again.status_code == 304
    bad = await gateway.http.get(out["url"] + "&format=tiff")
    assert bad.status_code == 422


async def stored(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


async def test_deleting_a_finished_job_removes_it_and_its_files(gateway) -> None:  # noqa: ANN001
    _, alice = await gateway.create_user("alice")
    _, bob = await gateway.create_user("bob")
    final = await finished_blur(gateway, alice)
    out = final["outputs"][0]
    # A converted copy is deleted with the job too.
    assert (await gateway.http.get(out["url"] + "&format=webp")).status_code == 200
    root = gateway.state.settings.storage_dir
    assert len(await stored(root / final["id"])) == 2

    assert (await gateway.http.delete(f"/v1/jobs/{final['id']}", headers=bob)).status_code == 404
    assert (await gateway.http.delete(f"/v1/jobs/{final['id']}", headers=alice)).status_code == 204
    assert (await gateway.http.get(f"/v1/jobs/{final['id']}", headers=alice)).status_code == 404
    assert (await gateway.http.get(out["url"])).status_code == 404
    assert await stored(root / final["id"]) == []
    async with gateway.state.sessionmaker() as session:
        assert (
            await session.execute(
                select(func.count()).select_from(Output).where(Output.job_id == final["id"])
            )
        ).scalar_one() == 0

    # An admin may delete any user's finished job.
    other = await finished_blur(gateway, bob)
    assert (await gateway.http.delete(f"/v1/jobs/{other['id']}", headers=gateway.admin)).status_code == 204


async def test_a_job_that_is_not_finished_cannot_be_deleted(idle_gateway) -> None:  # noqa: ANN001
    gw = await idle_gateway()
    job = (await gw.generate({"template": "blur", "params": {}})).json()
    resp = await gw.http.delete(f"/v1/jobs/{job['id']}", headers=gw.admin)
    assert resp.status_code == 409
    assert resp.headers["content-type"] == "application/problem+json"
    assert (await gw.job(job["id"]))["status"] == "queued"


async def test_retention_deletes_expired_outputs_and_uploads_and_keeps_a_tombstone(
    emulator, make_settings, gateway_factory
) -> None:  # noqa: ANN001
    gw = await gateway_factory(
        make_settings(comfyui_urls=[emulator.base_url], retention_days=1, retention_check_seconds=3600)
    )
    await gw.wait_ready()
    final = await finished_blur(gw)
    up = (await upload(gw, png(), gw.admin)).json()
    root = gw.state.settings.storage_dir
    retention = gw.state.retention

    # Within the retention period nothing goes.
    assert await retention.run_once() == (0, 0)
    assert len(await stored(root)) == 2

    assert await retention.run_once(now=utcnow() + timedelta(days=1, hours=1)) == (1, 1)
    assert await stored(root) == []
    async with gw.state.sessionmaker() as session:
        assert (await session.execute(select(func.count()).select_from(Output))).scalar_one() == 0
        assert (await session.execute(select(func.count()).select_from(Upload))).scalar_one() == 0
        row = await session.get(Job, final["id"])
        assert row is not None and row.outputs_expired_at is not None
    tomb = await gw.job(final["id"])
    assert tomb["status"] == "succeeded" and tomb["outputs"] == [] and tomb["outputs_expired_at"]
    assert (await gw.http.get(final["outputs"][0]["url"])).status_code == 404
    assert (await gw.http.get(f"/v1/uploads/{up['id']}", headers=gw.admin)).status_code == 404
    # A client resuming the job's events is told where it stands now (no links to deleted files),
    # and its stream ends.
    resumed = await gw.sse(final["id"], last_event_id="1", timeout=10)
    assert [(e.event, e.data["status"], e.data["outputs"]) for e in resumed] == [("status", "succeeded", [])]
    assert resumed[0].data["outputs_expired_at"] == tomb["outputs_expired_at"]
    # A second pass finds nothing more to delete.
    assert await retention.run_once(now=utcnow() + timedelta(days=1, hours=1)) == (0, 0)
