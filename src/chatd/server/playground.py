"""The playground: an interactive chat page served at `/` and `/playground`, with its ES
modules, stylesheet and vendored libraries (marked, DOMPurify) under `/playground/`. Plain
static files, no build step, nothing fetched from elsewhere; the page talks to this server's
own `/v1` API. Public: the API-key middleware lets these paths through, and the page sends the
key the user types with each API call."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC_DIR = (Path(__file__).parent.parent / "playground").resolve()
# What the page loads, by suffix; anything else under the folder (READMEs) is not served.
_MEDIA_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
}
# The page is small and changes with the package: let the browser revalidate each time.
_HEADERS = {"cache-control": "no-cache"}

router = APIRouter(include_in_schema=False)


@router.api_route("/", methods=["GET", "HEAD"])
@router.api_route("/playground", methods=["GET", "HEAD"])
@router.api_route("/playground/", methods=["GET", "HEAD"])
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_HEADERS)


@router.api_route("/playground/{path:path}", methods=["GET", "HEAD"])
async def asset(path: str) -> FileResponse:
    file = (STATIC_DIR / path).resolve()
    media_type = _MEDIA_TYPES.get(file.suffix)
    if media_type is None or not file.is_relative_to(STATIC_DIR) or not file.is_file():
        raise HTTPException(404, "Not Found")
    return FileResponse(file, media_type=media_type, headers=_HEADERS)
