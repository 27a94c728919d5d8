"""Responses several route groups give the way ComfyUI does."""

from __future__ import annotations

from aiohttp import web

_INTERNAL_ERROR = "500 Internal Server Error\n\nServer got itself in trouble"


def internal_error() -> web.Response:
    """What aiohttp answers when a ComfyUI handler raises (its body is plain text)."""
    return web.Response(status=500, text=_INTERNAL_ERROR)
