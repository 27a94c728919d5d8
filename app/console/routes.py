"""Serves the console's static files. Only the files in `static/` are served (a fixed set read at
import, so no request path ever reaches the filesystem); everything else under /console is a 404."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from app.domain.errors import NotFound

router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).parent / "static"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
_FILES = {p.name: p for p in STATIC.iterdir() if p.suffix in _TYPES}

# The page runs only its own module: no inline script or style, no third-party origin, and
# nothing may frame it (the API key is typed into it).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Revalidated on each load (the ETag makes that cheap), so an upgrade is seen at once.
    "Cache-Control": "no-cache",
}


def _serve(name: str) -> FileResponse:
    path = _FILES.get(name)
    if path is None:
        raise NotFound(f"The console has no file {name!r}.")
    return FileResponse(path, media_type=_TYPES[path.suffix], headers=SECURITY_HEADERS)


@router.get("/console")
@router.get("/console/")
async def console_page() -> FileResponse:
    return _serve("index.html")


@router.get("/console/{name}")
async def console_file(name: str) -> FileResponse:
    return _serve(name)
