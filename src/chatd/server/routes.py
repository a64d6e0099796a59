"""The HTTP surface: every URL form both clients use (CLIENTS.md), with and without a slash."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from chatd import __version__
from chatd.cache.keys import parse_flag
from chatd.models.loader import LoadedModel
from chatd.models.registry import ModelEntry, ModelState, Registry
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
    registry, settings = _registry(request), request.app.state.settings
    # Parsed here rather than by FastAPI so that any content-type (curl's default too) is JSON.
    try:
        body = ChatRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise bad_request(describe_validation(exc)) from None
    if body.model_extra:
        log.debug("ignoring unknown fields: %s", sorted(body.model_extra))
    org, name = request.path_params.get("org"), request.path_params.get("name")
    wait = parse_flag(request.headers.get("x-wait-for-model"), default=False)
    # A model named in the path wins over the body's.
    entry, model = await registry.acquire(f"{org}/{name}" if org else body.model, wait)
    streaming = False
    try:
        job = completions.prepare(body, model, settings)
        _refuse_when_queue_full(model, len(job.requests), settings.max_queue)
        if body.stream:
            events = completions.stream(model, job, body, settings.request_timeout)
            streaming = True
            return StreamingResponse(
                _released(events, registry, entry),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
            )
        work = completions.complete(model, job, body, settings.request_timeout)
        return JSONResponse(await _unless_disconnected(request, work))
    finally:
        if not streaming:
            registry.release(entry)


def _refuse_when_queue_full(model: LoadedModel, incoming: int, max_queue: int) -> None:
    waiting = model.engine.scheduler.counts()["waiting"]
    if waiting + incoming > max_queue:
        raise ChatdError(
            429, f"Model {model.id} has {waiting} requests waiting (limit {max_queue}); "
            "try again shortly", "overloaded", headers={"retry-after": "1"},
        )  # fmt: skip


async def _released(events: AsyncIterator[str], registry: Registry, entry: ModelEntry):
    """A stream that gives its model back when it ends, however it ends."""
    try:
        async for event in events:
            yield event
    finally:
        await events.aclose()
        registry.release(entry)


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
    entry = registry.default
    if entry.state is ModelState.FAILED:
        raise ChatdError(503, f"Model {entry.id} failed to load: {entry.error}", "loading")
    raise ChatdError(
        503, f"Model {entry.id} is currently loading", "loading",
        headers={"x-should-retry": "false"}, estimated_time=entry.estimated_time(),
    )  # fmt: skip


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
                **({"estimated_time": e.estimated_time()} if e.state is ModelState.LOADING else {}),
                **({"error": e.error} if e.state is ModelState.FAILED else {}),
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
