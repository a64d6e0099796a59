"""The playground: an interactive chat page served at `/` and `/playground`, with its script
and stylesheet under `/playground/`. Plain static files, no build step, nothing fetched from
elsewhere; the page talks to this server's own `/v1` API. Public: the API-key middleware lets
these paths through, and the page sends the key the user types with each API call."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).parent.parent / "playground"
_ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
# The page is small and changes with the package: let the browser revalidate each time.
_HEADERS = {"cache-control": "no-cache"}

router = APIRouter(include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"])
@router.api_route("/playground", methods=["GET", "HEAD"])
@router.api_route("/playground/", methods=["GET", "HEAD"])
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_HEADERS)


@router.api_route("/playground/app.js", methods=["GET", "HEAD"])
async def script() -> FileResponse:
    return FileResponse(STATIC_DIR / "app.js", media_type=_ASSETS["app.js"], headers=_HEADERS)


@router.api_route("/playground/style.css", methods=["GET", "HEAD"])
async def stylesheet() -> FileResponse:
    return FileResponse(STATIC_DIR / "style.css", media_type=_ASSETS["style.css"], headers=_HEADERS)
