"""Server information: `/system_stats`, `/features`, the frontend's settings and listings, and
`/internal/...`, with the values of the recorded install."""

from __future__ import annotations

import os
import sys
from typing import Any

from aiohttp import web

from ..catalog import MODEL_FOLDERS
from ..config import SERVER_FEATURES
from ..process import Process

COMFYUI_VERSION = "0.3.64"

#: GET /extensions of the recorded install.
_EXTENSIONS = [
    "/extensions/core/groupNode.js", "/extensions/core/maskEditorOld.js", "/extensions/core/clipspace.js",
    "/extensions/core/maskEditorLayerFilenames.js", "/extensions/core/widgetInputs.js",
    "/extensions/core/groupNodeManage.js",
]  # fmt: skip


def routes(process: Process) -> web.RouteTableDef:
    table = web.RouteTableDef()

    @table.get("/system_stats")
    async def system_stats(request: web.Request) -> web.Response:
        return web.json_response(_system_stats(process.host, process.port))

    @table.get("/features")
    async def get_features(request: web.Request) -> web.Response:
        return web.json_response(dict(SERVER_FEATURES))

    @table.get("/")
    async def get_root(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>ComfyUI (emulator)</title>", content_type="text/html")

    @table.get("/extensions")
    async def get_extensions(request: web.Request) -> web.Response:
        return web.json_response(_EXTENSIONS)

    _frontend_routes(table)
    _folder_routes(table, process)
    return table


def _frontend_routes(table: web.RouteTableDef) -> None:
    """What the web frontend reads at start, answered as by a fresh install."""

    @table.get("/users")
    async def get_users(request: web.Request) -> web.Response:
        return web.json_response({"storage": "server", "migrated": False})

    @table.get("/settings")
    async def get_settings(request: web.Request) -> web.Response:
        return web.json_response({})

    @table.get("/i18n")
    async def get_i18n(request: web.Request) -> web.Response:
        return web.json_response({})

    @table.get("/workflow_templates")
    async def get_workflow_templates(request: web.Request) -> web.Response:
        return web.json_response({})

    @table.get("/v2/userdata")
    async def get_userdata_v2(request: web.Request) -> web.Response:
        return web.json_response([])

    @table.get("/userdata")
    async def get_userdata(request: web.Request) -> web.Response:
        return web.Response(status=404, text="Directory not found")


def _folder_routes(table: web.RouteTableDef, process: Process) -> None:
    catalog, folders = process.parts.catalog, process.parts.folders

    @table.get("/internal/folder_paths")
    async def get_folder_paths(request: web.Request) -> web.Response:
        return web.json_response({f: [f"<COMFYUI_ROOT>/models/{f}"] for f in MODEL_FOLDERS})

    @table.get("/experiment/models")
    async def get_experiment_models(request: web.Request) -> web.Response:
        skip = {"configs", "custom_nodes"}
        return web.json_response(
            [{"name": f, "folders": [f"<COMFYUI_ROOT>/models/{f}"]} for f in MODEL_FOLDERS if f not in skip]
        )

    @table.get("/experiment/models/{folder}")
    async def get_experiment_models_folder(request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return web.Response(status=404)
        return web.json_response([{"name": n, "pathIndex": 0} for n in catalog.models.get(folder, [])])

    @table.get("/internal/files/{directory_type}")
    async def get_files(request: web.Request) -> web.Response:
        kind = request.match_info["directory_type"]
        folder = folders.by_type(kind)
        if folder is None:
            return web.Response(status=400, text="Invalid directory type")
        return web.json_response(folders.list_files_by_mtime(folder))


def _system_stats(host: str, port: int) -> dict[str, Any]:
    ram_total, ram_free = _memory()
    system = {
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
        "argv": ["main.py", "--cpu", "--listen", host, "--port", str(port), "--disable-auto-launch"],
    }
    device = {
        "name": "cpu",
        "type": "cpu",
        "index": None,
        "vram_total": ram_total,
        "vram_free": ram_free,
        "torch_vram_total": ram_total,
        "torch_vram_free": ram_free,
    }
    return {"system": system, "devices": [device]}


def _memory() -> tuple[int, int]:
    try:
        pages, free = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_AVPHYS_PAGES")
        size = os.sysconf("SC_PAGE_SIZE")
        return pages * size, free * size
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16 * 1024**3, 8 * 1024**3
