"""The HTTP routes, each also served under `/api`, as ComfyUI's PromptServer registers them.

Bodies and statuses follow the recordings (scenario_*.json, endpoints_get.json). The emulator's
own `/emulator/...` routes are in control.py.
"""

from __future__ import annotations

import io
import json
import os
import sys
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .catalog import MODEL_FOLDERS
from .config import SERVER_FEATURES
from .control import control_routes
from .files import content_type
from .validation import SENSITIVE_EXTRA_DATA_KEYS

if TYPE_CHECKING:
    from .emulator import Emulator

COMFYUI_VERSION = "0.3.64"
_INTERNAL_ERROR = "500 Internal Server Error\n\nServer got itself in trouble"

#: GET /extensions of the recorded install.
_EXTENSIONS = [
    "/extensions/core/groupNode.js", "/extensions/core/maskEditorOld.js", "/extensions/core/clipspace.js",
    "/extensions/core/maskEditorLayerFilenames.js", "/extensions/core/widgetInputs.js",
    "/extensions/core/groupNodeManage.js",
]  # fmt: skip


def _internal_error() -> web.Response:
    return web.Response(status=500, text=_INTERNAL_ERROR)


def build_app(emu: Emulator) -> web.Application:
    routes = web.RouteTableDef()
    folders = emu.folders

    # -- websocket ----------------------------------------------------------------------------

    @routes.get("/ws")
    async def websocket_handler(request: web.Request) -> web.StreamResponse:
        def on_connect(sid: str) -> None:
            executor = emu.state.executor
            if executor.client_id == sid and executor.last_node_id is not None:
                emu.hub.send_json("executing", {"node": executor.last_node_id}, sid)

        return await emu.hub.handle(request, lambda: emu.state.queue.queue_info(), on_connect)

    # -- prompts ------------------------------------------------------------------------------

    @routes.post("/prompt")
    async def post_prompt(request: web.Request) -> web.Response:
        try:
            json_data = await request.json()
        except ValueError:
            return _internal_error()
        if not isinstance(json_data, (dict, list, str)):
            return _internal_error()
        queue = emu.state.queue
        try:
            if "number" in json_data:
                number: Any = float(json_data["number"])  # type: ignore[index]
            else:
                number = queue.number
                if "front" in json_data and json_data["front"]:  # type: ignore[index]
                    number = -number
                queue.number += 1
        except (TypeError, ValueError):
            return _internal_error()
        if not isinstance(json_data, dict) or "prompt" not in json_data:
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        prompt = json_data["prompt"]
        prompt_id = str(json_data.get("prompt_id", uuid.uuid4()))
        try:
            valid = emu.validator.validate_prompt(prompt, json_data.get("partial_execution_targets"))
        except Exception:  # noqa: BLE001  as ComfyUI: any failure is answered, never crashes the server
            return _internal_error()
        extra_data = json_data.get("extra_data", {})
        if not isinstance(extra_data, dict):
            return _internal_error()
        if "client_id" in json_data:
            extra_data["client_id"] = json_data["client_id"]
        if not valid[0]:
            return web.json_response({"error": valid[1], "node_errors": valid[3]}, status=400)
        sensitive = {k: extra_data.pop(k) for k in SENSITIVE_EXTRA_DATA_KEYS if k in extra_data}
        queue.put((number, prompt_id, prompt, extra_data, valid[2], sensitive))
        emu.prompts_received.append(prompt_id)
        # Who sent it (a gateway replica names itself): tests check that one replica at a time does.
        emu.prompt_senders[prompt_id] = request.headers.get("X-Gateway-Replica")
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": valid[3]})

    @routes.get("/prompt")
    async def get_prompt(request: web.Request) -> web.Response:
        return web.json_response(emu.state.queue.queue_info())

    @routes.get("/queue")
    async def get_queue(request: web.Request) -> web.Response:
        running, pending = emu.state.queue.current_queue()
        return web.json_response({"queue_running": running, "queue_pending": pending})

    @routes.post("/queue")
    async def post_queue(request: web.Request) -> web.Response:
        json_data = await request.json()
        queue = emu.state.queue
        if "clear" in json_data and json_data["clear"]:
            queue.wipe_queue()
        if "delete" in json_data:
            for prompt_id in json_data["delete"]:
                queue.delete_queue_item(prompt_id)
        return web.Response(status=200)

    @routes.post("/interrupt")
    async def post_interrupt(request: web.Request) -> web.Response:
        try:
            json_data = await request.json()
        except ValueError:
            json_data = {}
        emu.interrupts.append(json_data)
        prompt_id = json_data.get("prompt_id") if isinstance(json_data, dict) else None
        state = emu.state
        if prompt_id:
            running, _ = state.queue.current_queue()
            if any(item[1] == prompt_id for item in running):
                state.executor.interrupt.set()
        else:
            state.executor.interrupt.set()
        return web.Response(status=200)

    @routes.post("/free")
    async def post_free(request: web.Request) -> web.Response:
        return web.Response(status=200)

    @routes.get("/history")
    async def get_history(request: web.Request) -> web.Response:
        q = request.rel_url.query
        max_items = int(q["max_items"]) if "max_items" in q else None
        offset = int(q["offset"]) if "offset" in q else -1
        return web.json_response(emu.state.queue.get_history(max_items=max_items, offset=offset))

    @routes.get("/history/{prompt_id}")
    async def get_history_item(request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        entry = emu.state.queue.history.get(prompt_id)
        return web.json_response({} if entry is None else {prompt_id: entry})

    @routes.post("/history")
    async def post_history(request: web.Request) -> web.Response:
        json_data = await request.json()
        queue = emu.state.queue
        if "clear" in json_data and json_data["clear"]:
            queue.wipe_history()
        if "delete" in json_data:
            for prompt_id in json_data["delete"]:
                queue.delete_history_item(prompt_id)
        return web.Response(status=200)

    # -- node definitions & models ------------------------------------------------------------

    @routes.get("/object_info")
    async def get_object_info(request: web.Request) -> web.Response:
        return web.Response(body=emu.catalog.body(), content_type="application/json", charset="utf-8")

    @routes.get("/object_info/{node_class}")
    async def get_object_info_node(request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        defs = emu.catalog.definitions()
        return web.json_response({name: defs[name]} if name in defs else {})

    @routes.get("/models")
    async def list_model_types(request: web.Request) -> web.Response:
        return web.json_response(MODEL_FOLDERS)

    @routes.get("/models/{folder}")
    async def get_models(request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return web.Response(status=404)
        return web.json_response(list(emu.catalog.models.get(folder, [])))

    @routes.get("/embeddings")
    async def get_embeddings(request: web.Request) -> web.Response:
        return web.json_response(list(emu.catalog.models.get("embeddings", [])))

    @routes.get("/view_metadata/{folder_name}")
    async def view_metadata(request: web.Request) -> web.Response:
        if "filename" not in request.rel_url.query:
            return web.Response(status=404)
        return web.Response(status=404)

    # -- files --------------------------------------------------------------------------------

    async def image_upload(post: Any, save: Any = None) -> web.Response:
        image = post.get("image")
        if image is None or not hasattr(image, "file"):
            return web.Response(status=400)
        upload_type = post.get("type") or "input"
        base = folders.by_type(upload_type)
        if base is None:
            return _internal_error()  # ComfyUI fails on an unknown type the same way
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

    @routes.post("/upload/image")
    async def upload_image(request: web.Request) -> web.Response:
        return await image_upload(await request.post())

    @routes.post("/upload/mask")
    async def upload_mask(request: web.Request) -> web.Response:
        """Copies the uploaded mask's alpha onto the original image (`original_ref`)."""

        def save(content: bytes, post: Any, path: Any) -> web.Response | None:
            try:
                ref = json.loads(post.get("original_ref"))
            except (TypeError, ValueError):
                return _internal_error()
            original = _resolve(ref.get("filename", ""), ref.get("type", "output"), ref.get("subfolder", ""))
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

        return await image_upload(await request.post(), save)

    def _resolve(filename: str, type_: str | None, subfolder: str) -> Any:
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

    @routes.get("/view")
    async def view_image(request: web.Request) -> web.StreamResponse:
        q = request.rel_url.query
        if "filename" not in q:
            return web.Response(status=404)
        path = _resolve(q["filename"], q.get("type", "output"), q.get("subfolder", ""))
        if isinstance(path, web.Response):
            return path
        if not path.is_file():
            return web.Response(status=404)
        name = path.name
        disposition = {"Content-Disposition": f'filename="{name}"'}
        if "preview" in q:
            info = q["preview"].split(";")
            fmt = info[0] if info[0] in ("webp", "jpeg") and "a" not in q.get("channel", "") else "webp"
            quality = int(info[-1]) if info[-1].isdigit() else 90
            with Image.open(path) as img:
                if fmt == "jpeg" or q.get("channel", "") == "rgb":
                    img = img.convert("RGB")
                buf = io.BytesIO()
                img.save(buf, format=fmt, quality=quality)
            return web.Response(body=buf.getvalue(), content_type=f"image/{fmt}", headers=disposition)
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

    # -- server info --------------------------------------------------------------------------

    @routes.get("/system_stats")
    async def system_stats(request: web.Request) -> web.Response:
        ram_total, ram_free = _memory()
        return web.json_response(
            {
                "system": {
                    "os": os.name,
                    "ram_total": ram_total,
                    "ram_free": ram_free,
                    "comfyui_version": COMFYUI_VERSION,
                    "required_frontend_version": "1.27.10",
                    "installed_templates_version": "0.1.95",
                    "required_templates_version": "0.1.95",
                    "python_version": sys.version,
                    "pytorch_version": "2.13.0+cpu",
                    "embedded_python": False,
                    "argv": [
                        "main.py",
                        "--cpu",
                        "--listen",
                        emu.host,
                        "--port",
                        str(emu.port),
                        "--disable-auto-launch",
                    ],
                },
                "devices": [
                    {
                        "name": "cpu",
                        "type": "cpu",
                        "index": None,
                        "vram_total": ram_total,
                        "vram_free": ram_free,
                        "torch_vram_total": ram_total,
                        "torch_vram_free": ram_free,
                    }
                ],
            }
        )

    @routes.get("/features")
    async def get_features(request: web.Request) -> web.Response:
        return web.json_response(dict(SERVER_FEATURES))

    @routes.get("/")
    async def get_root(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>ComfyUI (emulator)</title>", content_type="text/html")

    @routes.get("/extensions")
    async def get_extensions(request: web.Request) -> web.Response:
        return web.json_response(_EXTENSIONS)

    @routes.get("/users")
    async def get_users(request: web.Request) -> web.Response:
        return web.json_response({"storage": "server", "migrated": False})

    @routes.get("/settings")
    async def get_settings(request: web.Request) -> web.Response:
        return web.json_response({})

    @routes.get("/i18n")
    async def get_i18n(request: web.Request) -> web.Response:
        return web.json_response({})

    @routes.get("/workflow_templates")
    async def get_workflow_templates(request: web.Request) -> web.Response:
        return web.json_response({})

    @routes.get("/v2/userdata")
    async def get_userdata_v2(request: web.Request) -> web.Response:
        return web.json_response([])

    @routes.get("/userdata")
    async def get_userdata(request: web.Request) -> web.Response:
        return web.Response(status=404, text="Directory not found")

    @routes.get("/internal/folder_paths")
    async def get_folder_paths(request: web.Request) -> web.Response:
        return web.json_response({f: [f"<COMFYUI_ROOT>/models/{f}"] for f in MODEL_FOLDERS})

    @routes.get("/experiment/models")
    async def get_experiment_models(request: web.Request) -> web.Response:
        skip = {"configs", "custom_nodes"}
        return web.json_response(
            [{"name": f, "folders": [f"<COMFYUI_ROOT>/models/{f}"]} for f in MODEL_FOLDERS if f not in skip]
        )

    @routes.get("/experiment/models/{folder}")
    async def get_experiment_models_folder(request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return web.Response(status=404)
        return web.json_response([{"name": n, "pathIndex": 0} for n in emu.catalog.models.get(folder, [])])

    @routes.get("/internal/files/{directory_type}")
    async def get_files(request: web.Request) -> web.Response:
        kind = request.match_info["directory_type"]
        folder = folders.by_type(kind)
        if folder is None:
            return web.Response(status=400, text="Invalid directory type")
        return web.json_response(folders.list_files_by_mtime(folder))

    app = web.Application(
        client_max_size=SERVER_FEATURES["max_upload_size"], middlewares=[emu.faults.middleware()]
    )
    api_routes = web.RouteTableDef()
    for route in routes:
        if isinstance(route, web.RouteDef):
            api_routes.route(route.method, "/api" + route.path)(route.handler)
    app.add_routes(routes)
    app.add_routes(api_routes)
    app.add_routes(control_routes(emu))
    return app


def _memory() -> tuple[int, int]:
    try:
        pages, free = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_AVPHYS_PAGES")
        size = os.sysconf("SC_PAGE_SIZE")
        return pages * size, free * size
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16 * 1024**3, 8 * 1024**3
