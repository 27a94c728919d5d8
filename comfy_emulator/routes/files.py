"""Files: `/upload/image`, `/upload/mask` and `/view`."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..files import Folders, content_type
from ..process import Process
from .common import internal_error

#: Writes an upload's content to its path, or answers with an error instead.
Save = Callable[[bytes, Any, Path], "web.Response | None"]


def routes(process: Process) -> web.RouteTableDef:
    table = web.RouteTableDef()
    folders = process.parts.folders

    @table.post("/upload/image")
    async def upload_image(request: web.Request) -> web.Response:
        return await _image_upload(folders, await request.post())

    @table.post("/upload/mask")
    async def upload_mask(request: web.Request) -> web.Response:
        """Copies the uploaded mask's alpha onto the original image (`original_ref`)."""

        def save(content: bytes, post: Any, path: Path) -> web.Response | None:
            return _apply_mask(folders, content, post, path)

        return await _image_upload(folders, await request.post(), save)

    @table.get("/view")
    async def view_image(request: web.Request) -> web.StreamResponse:
        return _view(folders, request.rel_url.query)

    return table


async def _image_upload(folders: Folders, post: Any, save: Save | None = None) -> web.Response:
    image = post.get("image")
    if image is None or not hasattr(image, "file"):
        return web.Response(status=400)
    upload_type = post.get("type") or "input"
    base = folders.by_type(upload_type)
    if base is None:
        return internal_error()  # ComfyUI fails on an unknown type the same way
    filename = image.filename
    if not filename:
        return web.Response(status=400)
    subfolder = post.get("subfolder", "")
    content = image.file.read()
    overwrite = post.get("overwrite") in ("true", "1")
    target = folders.upload_target(base, subfolder, filename, overwrite, content)
    if target is None:
        return web.Response(status=400)
    path, name, duplicate = target
    if not duplicate:
        if save is not None:
            problem = save(content, post, path)
            if problem is not None:
                return problem
        else:
            path.write_bytes(content)
    return web.json_response({"name": name, "subfolder": subfolder, "type": upload_type})


def _apply_mask(folders: Folders, content: bytes, post: Any, path: Path) -> web.Response | None:
    try:
        ref = json.loads(post.get("original_ref"))
    except (TypeError, ValueError):
        return internal_error()
    original = _resolve(folders, ref.get("filename", ""), ref.get("type", "output"), ref.get("subfolder", ""))
    if isinstance(original, web.Response):
        return original
    if original.is_file():
        with Image.open(original) as orig:
            meta = PngInfo()
            for key, value in getattr(orig, "text", {}).items():
                meta.add_text(key, value)
            rgba = orig.convert("RGBA")
            mask = Image.open(io.BytesIO(content)).convert("RGBA")
            rgba.putalpha(mask.getchannel("A"))
            rgba.save(path, format="PNG", compress_level=4, pnginfo=meta)
    return None


def _resolve(folders: Folders, filename: str, type_: str | None, subfolder: str) -> Any:
    """A /view-style file reference -> path, or the error response ComfyUI gives."""
    if not filename:
        return web.Response(status=400)
    m = filename.rsplit(" [", 1)
    base = None
    if len(m) == 2 and m[1].endswith("]") and m[1][:-1] in ("input", "output", "temp"):
        filename, base = m[0], folders.by_type(m[1][:-1])
    if filename[0] == "/" or ".." in filename:
        return web.Response(status=400)
    if base is None:
        base = folders.by_type(type_ or "output")
    if base is None:
        return web.Response(status=400)
    if subfolder:
        full = (base / subfolder).resolve()
        if os.path.commonpath((str(full), str(base))) != str(base):
            return web.Response(status=403)
        base = full
    return base / os.path.basename(filename)


def _view(folders: Folders, q: Any) -> web.StreamResponse:
    if "filename" not in q:
        return web.Response(status=404)
    path = _resolve(folders, q["filename"], q.get("type", "output"), q.get("subfolder", ""))
    if isinstance(path, web.Response):
        return path
    if not path.is_file():
        return web.Response(status=404)
    name = path.name
    disposition = {"Content-Disposition": f'filename="{name}"'}
    if "preview" in q:
        return _preview(path, q, disposition)
    channel = q.get("channel", "rgba")
    if channel in ("rgb", "a"):
        with Image.open(path) as img:
            if channel == "rgb":
                out = img.convert("RGB")
            else:
                alpha = img.getchannel("A") if img.mode == "RGBA" else Image.new("L", img.size, 255)
                out = Image.new("RGBA", img.size)
                out.putalpha(alpha)
            buf = io.BytesIO()
            out.save(buf, format="PNG")
        return web.Response(body=buf.getvalue(), content_type="image/png", headers=disposition)
    return web.FileResponse(path, headers={**disposition, "Content-Type": content_type(name)})


def _preview(path: Path, q: Any, disposition: dict[str, str]) -> web.Response:
    """`/view?preview=webp;90`: the image re-encoded (jpeg drops alpha, as in ComfyUI)."""
    info = q["preview"].split(";")
    fmt = info[0] if info[0] in ("webp", "jpeg") and "a" not in q.get("channel", "") else "webp"
    quality = int(info[-1]) if info[-1].isdigit() else 90
    with Image.open(path) as img:
        if fmt == "jpeg" or q.get("channel", "") == "rgb":
            img = img.convert("RGB")
        buf = io.BytesIO()
        img.save(buf, format=fmt, quality=quality)
    return web.Response(body=buf.getvalue(), content_type=f"image/{fmt}", headers=disposition)
