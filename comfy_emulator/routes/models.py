"""Node definitions and models: `/object_info`, `/models`, `/embeddings`, `/view_metadata`."""

from __future__ import annotations

from aiohttp import web

from ..catalog import MODEL_FOLDERS
from ..process import Process


def routes(process: Process) -> web.RouteTableDef:
    table = web.RouteTableDef()
    catalog = process.parts.catalog

    @table.get("/object_info")
    async def get_object_info(request: web.Request) -> web.Response:
        return web.Response(body=catalog.body(), content_type="application/json", charset="utf-8")

    @table.get("/object_info/{node_class}")
    async def get_object_info_node(request: web.Request) -> web.Response:
        name = request.match_info["node_class"]
        defs = catalog.definitions()
        return web.json_response({name: defs[name]} if name in defs else {})

    @table.get("/models")
    async def list_model_types(request: web.Request) -> web.Response:
        return web.json_response(MODEL_FOLDERS)

    @table.get("/models/{folder}")
    async def get_models(request: web.Request) -> web.Response:
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return web.Response(status=404)
        return web.json_response(list(catalog.models.get(folder, [])))

    @table.get("/embeddings")
    async def get_embeddings(request: web.Request) -> web.Response:
        return web.json_response(list(catalog.models.get("embeddings", [])))

    @table.get("/view_metadata/{folder_name}")
    async def view_metadata(request: web.Request) -> web.Response:
        if "filename" not in request.rel_url.query:
            return web.Response(status=404)
        return web.Response(status=404)

    return table
