"""Uploads (`/upload/image`, `/upload/mask`) and `/view`."""

from __future__ import annotations

import io
import json
from typing import Any

import aiohttp
from PIL import Image

from comfy_emulator import Emulator

from .helpers import CLIENT_A, WsClient


def png(color: tuple[int, ...], size: tuple[int, int] = (8, 8), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


async def upload(
    http: aiohttp.ClientSession,
    emu: Emulator,
    name: str,
    content: bytes,
    route: str = "/upload/image",
    **fields: str,
) -> tuple[int, Any]:
    form = aiohttp.FormData()
    for k, v in fields.items():
        form.add_field(k, v)
    form.add_field("image", content, filename=name, content_type="image/png")
    async with http.post(emu.base_url + route, data=form) as r:
        return r.status, (await r.json() if r.content_type == "application/json" else await r.text())


async def test_upload_renames_on_conflict(emu: Emulator, http: aiohttp.ClientSession) -> None:
    a, b, c = png((1, 1, 1)), png((2, 2, 2)), png((3, 3, 3))
    assert await upload(http, emu, "cat.png", a) == (
        200,
        {"name": "cat.png", "subfolder": "", "type": "input"},
    )
    assert await upload(http, emu, "cat.png", b) == (
        200,
        {"name": "cat (1).png", "subfolder": "", "type": "input"},
    )
    assert await upload(http, emu, "cat.png", c) == (
        200,
        {"name": "cat (2).png", "subfolder": "", "type": "input"},
    )
    # The same content as an existing file is not stored twice: its name comes back.
    assert await upload(http, emu, "cat.png", a) == (
        200,
        {"name": "cat.png", "subfolder": "", "type": "input"},
    )
    assert await upload(http, emu, "cat.png", b) == (
        200,
        {"name": "cat (1).png", "subfolder": "", "type": "input"},
    )
    assert sorted(p.name for p in emu.input_dir.iterdir()) == [
        "cat (1).png",
        "cat (2).png",
        "cat.png",
        "example.png",
    ]
    # overwrite=true (or 1) replaces in place.
    assert await upload(http, emu, "cat.png", c, overwrite="1") == (
        200,
        {"name": "cat.png", "subfolder": "", "type": "input"},
    )
    assert (emu.input_dir / "cat.png").read_bytes() == c
    # Into a subfolder and into other folders.
    assert await upload(http, emu, "dog.png", a, subfolder="pets/dogs") == (
        200,
        {"name": "dog.png", "subfolder": "pets/dogs", "type": "input"},
    )
    assert (emu.input_dir / "pets" / "dogs" / "dog.png").read_bytes() == a
    assert await upload(http, emu, "t.png", a, type="temp") == (
        200,
        {"name": "t.png", "subfolder": "", "type": "temp"},
    )
    assert (emu.temp_dir / "t.png").exists()
    assert (await upload(http, emu, "o.png", a, type="output"))[1]["type"] == "output"
    # Escaping the folder is refused.
    assert (await upload(http, emu, "x.png", a, subfolder="../../etc"))[0] == 400


async def test_object_info_lists_uploaded_images(emu: Emulator, http: aiohttp.ClientSession) -> None:
    async def options() -> list[str]:
        async with http.get(emu.base_url + "/object_info/LoadImage") as r:
            return (await r.json())["LoadImage"]["input"]["required"]["image"][0]

    assert await options() == ["example.png"]
    await upload(http, emu, "b.png", png((9, 9, 9)))
    await upload(http, emu, "a.png", png((8, 8, 8)))
    await upload(http, emu, "deep.png", png((8, 8, 8)), subfolder="sub")
    assert await options() == ["a.png", "b.png", "example.png"]
    async with http.get(emu.base_url + "/object_info") as r:
        assert (await r.json())["LoadImageMask"]["input"]["required"]["image"][0] == [
            "a.png",
            "b.png",
            "example.png",
        ]
    async with http.get(emu.base_url + "/internal/files/input") as r:
        assert sorted(await r.json()) == ["a.png", "b.png", "example.png"]


async def test_upload_mask(emu: Emulator, http: aiohttp.ClientSession) -> None:
    await upload(http, emu, "photo.png", png((10, 20, 30), (4, 4)))
    mask = png((0, 0, 0, 77), (4, 4), "RGBA")
    ref = json.dumps({"filename": "photo.png", "subfolder": "", "type": "input"})
    status, body = await upload(
        http,
        emu,
        "clipspace-mask.png",
        mask,
        route="/upload/mask",
        original_ref=ref,
        type="input",
        subfolder="clipspace",
    )
    assert status == 200 and body == {"name": "clipspace-mask.png", "subfolder": "clipspace", "type": "input"}
    out = Image.open(emu.input_dir / "clipspace" / "clipspace-mask.png")
    assert out.mode == "RGBA" and out.getpixel((0, 0)) == (10, 20, 30, 77)


async def test_view(emu: Emulator, http: aiohttp.ClientSession) -> None:
    jpg = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 0, 0)).save(jpg, format="JPEG")
    (emu.output_dir / "photo.jpg").write_bytes(jpg.getvalue())
    (emu.output_dir / "sub").mkdir()
    (emu.output_dir / "sub" / "in_sub.png").write_bytes(png((5, 5, 5)))
    (emu.output_dir / "page.html").write_text("<script>alert(1)</script>")

    async def view(**params: str) -> tuple[int, dict[str, str], bytes]:
        async with http.get(emu.base_url + "/view", params=params) as r:
            return r.status, dict(r.headers), await r.read()

    status, headers, data = await view(filename="photo.jpg")  # type defaults to output
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and data == jpg.getvalue()
    assert headers["Content-Disposition"] == 'filename="photo.jpg"'
    assert (await view(filename="in_sub.png", subfolder="sub", type="output"))[0] == 200
    assert (await view(filename="in_sub.png"))[0] == 404
    assert (await view(filename="example.png", type="input"))[0] == 200
    assert (await view(filename="photo.jpg [output]", type="input"))[0] == 200  # annotated name wins
    assert (await view(filename="page.html"))[1]["Content-Type"] == "application/octet-stream"
    assert (await view(filename="../secret.png"))[0] == 400
    assert (await view(filename="x.png", subfolder="../..", type="output"))[0] == 403
    assert (await view(filename="x.png", type="nope"))[0] == 400
    status, headers, data = await view(filename="in_sub.png", subfolder="sub", channel="rgb")
    assert status == 200 and Image.open(io.BytesIO(data)).mode == "RGB"
    status, headers, data = await view(filename="photo.jpg", preview="jpeg;50")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and data[:2] == b"\xff\xd8"
    async with http.get(emu.base_url + "/view") as r:
        assert r.status == 404


async def test_load_image_from_subfolder_and_annotated(emu: Emulator, http: aiohttp.ClientSession) -> None:
    await upload(http, emu, "sub_upload.png", png((0, 255, 0), (5, 7)), subfolder="harness")
    ws = await WsClient.connect(http, emu.base_url, CLIENT_A)
    for name in ("harness/sub_upload.png", "example.png [input]"):
        body = {
            "prompt": {
                "1": {"class_type": "LoadImage", "inputs": {"image": name}},
                "2": {
                    "class_type": "SaveImage",
                    "inputs": {"images": ["1", 0], "filename_prefix": "sub/loaded"},
                },
            },
            "client_id": CLIENT_A,
        }
        async with http.post(emu.base_url + "/prompt", json=body) as r:
            assert r.status == 200, await r.text()
            pid = (await r.json())["prompt_id"]
        await ws.wait_done(pid)
    executed = [
        f["json"]["data"]["output"]["images"][0]
        for f in ws.frames
        if f["frame"] == "text" and f["json"]["type"] == "executed"
    ]
    assert executed == [
        {"filename": "loaded_00001_.png", "subfolder": "sub", "type": "output"},
        {"filename": "loaded_00002_.png", "subfolder": "sub", "type": "output"},
    ]
    assert Image.open(emu.output_dir / "sub" / "loaded_00001_.png").size == (5, 7)
