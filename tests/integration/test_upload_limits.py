"""Bounds on what users may store as inputs: frames of an animated image, and a per-user quota."""

from __future__ import annotations

import base64
import io

from PIL import Image

from .test_uploads import img2img, png, stored_files, upload, upload_count


def gif(frames: int, width: int, height: int) -> bytes:
    # Each frame differs from the last (Pillow merges equal ones): a pixel moves along the top row.
    images = []
    for i in range(frames):
        frame = Image.new("L", (width, height), 0)
        frame.putpixel((i % width, 0), 255)
        images.append(frame)
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=10, loop=0)
    return buf.getvalue()


def data_uri(data: bytes, ctype: str = "image/gif") -> str:
    return f"data:{ctype};base64," + base64.b64encode(data).decode()


async def test_an_animated_image_is_bounded_by_its_frames_pixels_and_frame_count(idle_gateway) -> None:  # noqa: ANN001
    gw = await idle_gateway(max_image_pixels=100_000, max_image_frames=30)
    _, alice = await gw.create_user("alice")
    # 20 frames of 100x100: each frame is under the pixel cap, all of them together are not.
    bomb = gif(20, 100, 100)
    with Image.open(io.BytesIO(bomb)) as img:
        assert img.n_frames == 20
    resp = await upload(gw, bomb, alice, filename="anim.gif", ctype="image/gif")
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert "frames" in resp.json()["detail"] and resp.json()["errors"][0]["field"] == "file"
    # The same as a data: URI param: 422 naming the param, no job.
    refused = await gw.generate(img2img(data_uri(bomb)), alice)
    assert refused.status_code == 422, refused.text
    assert (
        refused.json()["errors"][0]["param"] == "image" and "frames" in refused.json()["errors"][0]["message"]
    )
    # More frames than GATEWAY_MAX_IMAGE_FRAMES, however small.
    many = await upload(gw, gif(40, 4, 4), alice, filename="many.gif", ctype="image/gif")
    assert many.status_code == 422 and "30 frames" in many.json()["detail"]
    assert await upload_count(gw) == 0
    assert stored_files(gw.state.settings.storage_dir) == []
    # Within both bounds: accepted.
    ok = await upload(gw, gif(9, 100, 100), alice, filename="ok.gif", ctype="image/gif")
    assert ok.status_code == 201, ok.text
    assert (await gw.generate(img2img(data_uri(gif(5, 100, 100))), alice)).status_code == 202


async def test_each_user_has_an_upload_quota_of_files_and_bytes(idle_gateway) -> None:  # noqa: ANN001
    image = png(64, 64, noise=True)
    gw = await idle_gateway(max_uploads_per_user=3, max_upload_bytes_per_user=len(image) * 2 + 1024)
    _, alice = await gw.create_user("alice")
    _, bob = await gw.create_user("bob")

    first = (await upload(gw, image, alice)).json()
    assert (await upload(gw, image, alice)).status_code == 201
    # Two files: the bytes quota is full.
    over = await upload(gw, image, alice)
    assert over.status_code == 409, over.text
    assert over.headers["content-type"] == "application/problem+json"
    problem = over.json()
    assert (
        problem["limit"] == "max_upload_bytes_per_user" and "max_upload_bytes_per_user" in problem["detail"]
    )
    # The same through a data: URI param: no upload, no job.
    refused = await gw.generate(img2img(data_uri(image, "image/png")), alice)
    assert refused.status_code == 409 and refused.json()["limit"] == "max_upload_bytes_per_user"
    assert await upload_count(gw) == 2
    assert len(stored_files(gw.state.settings.storage_dir)) == 2
    # Another user's quota is their own.
    assert (await upload(gw, image, bob)).status_code == 201

    # Small files: the count quota.
    for _ in range(1):
        assert (await upload(gw, png(4, 4), alice)).status_code == 201
    full = await upload(gw, png(4, 4), alice)
    assert full.status_code == 409 and full.json()["limit"] == "max_uploads_per_user"
    # Deleting an upload makes room again.
    assert (await gw.http.delete(f"/v1/uploads/{first['id']}", headers=alice)).status_code == 204
    assert (await upload(gw, png(4, 4), alice)).status_code == 201
