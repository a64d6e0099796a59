"""The HTTP surface: every URL form both clients use (CLIENTS.md), with and without a slash."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from chatd import __version__
from chatd.models.registry import ModelState, Registry
from chatd.server import completions
from chatd.server.errors import ChatdError, bad_request, describe_validation
from chatd.server.protocol import MAX_STOP, MAX_TOP_LOGPROBS, ChatRequest

log = logging.getLogger(__name__)
router = APIRouter()

CHAT_PATHS = (
    "/v1/chat/completions",
    "/chat/completions",
    "/models/{org}/{name}/v1/chat/completions",
)


def _registry(request: Request) -> Registry:
    return request.app.state.registry


async def chat_completions(request: Request):
    # Parsed here rather than by FastAPI so that any content-type (curl's default too) is JSON.
    try:
        body = ChatRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise bad_request(describe_validation(exc)) from None
    if body.model_extra:
        log.debug("ignoring unknown fields: %s", sorted(body.model_extra))
    org, name = request.path_params.get("org"), request.path_params.get("name")
    # A model named in the path wins over the body's.
    model = _registry(request).ready(f"{org}/{name}" if org else body.model)
    job = completions.prepare(body, model, request.app.state.settings)
    if body.stream:
        return StreamingResponse(
            completions.stream(model, job, body),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
    result = await _unless_disconnected(request, completions.complete(model, job, body))
    return JSONResponse(result)


_BODY_SCHEMA = {
    "required": True,
    "content": {"application/json": {"schema": ChatRequest.model_json_schema()}},
}
for _path in CHAT_PATHS:
    for _p in (_path, _path + "/"):
        router.add_api_route(
            _p,
            chat_completions,
            methods=["POST"],
            include_in_schema=_p == _path,
            openapi_extra={"requestBody": _BODY_SCHEMA},
        )


async def _unless_disconnected(request: Request, work):
    """Run work, cancelling it (and so freeing its sequences) if the client goes away."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled():
        raise ChatdError(499, "client closed the request", "cancelled")
    return task.result()


@router.get("/health")
async def health(request: Request):
    registry = _registry(request)
    if registry.default.state is ModelState.READY:
        return {"status": "ok", "model": registry.default.id}
    registry.ready(None)  # raises the loading (or failed) error with its details


@router.get("/v1/models")
async def list_models(request: Request):
    registry = _registry(request)
    return {
        "object": "list",
        "data": [
            {
                "id": e.id,
                "object": "model",
                "created": int(request.app.state.started),
                "owned_by": "chatd",
                "state": e.state.value,
                "aliases": sorted(e.aliases),
            }
            for e in registry.entries.values()
        ],
    }


@router.get("/info")
async def info(request: Request):
    registry, settings = _registry(request), request.app.state.settings
    entry = registry.default
    engine = entry.loaded.engine if entry.loaded else None
    return {
        "version": __version__,
        "model_id": entry.id,
        "model_path": str(entry.source.path),
        "state": entry.state.value,
        "runner": engine.runner.name if engine else None,
        "context_length": settings.ctx,
        "max_parallel": settings.parallel,
        "max_batch_tokens": settings.batch_tokens,
        "limits": {
            "max_n": settings.max_n,
            "max_stop": MAX_STOP,
            "max_top_logprobs": MAX_TOP_LOGPROBS,
        },
        "sequences": engine.scheduler.counts() if engine else None,
    }
