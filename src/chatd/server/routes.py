"""The HTTP surface: every URL form both clients use (CLIENTS.md), with and without a slash."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from chatd import __version__
from chatd.cache.keys import parse_flag
from chatd.models.loader import LoadedModel
from chatd.models.registry import ModelEntry, ModelState, Registry
from chatd.server import completions, streaming
from chatd.server.caching import CacheLookup
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
    data, body = _parse(await request.body())
    org, name = request.path_params.get("org"), request.path_params.get("name")
    entry = registry.find(f"{org}/{name}" if org else body.model)  # the path wins over the body
    cache = CacheLookup.for_request(request, entry.id, data)
    if cached := cache.lookup():
        return _cached_response(cached, body, cache)
    wait = parse_flag(request.headers.get("x-wait-for-model"), default=False)
    model = await registry.acquire(entry, wait)
    job, handed_off = None, False
    try:
        job = await completions.prepare(body, model, settings)
        _refuse_when_queue_full(model, len(job.requests), settings.max_queue)
        job.start(model)  # right after the check, nothing awaited in between
        if body.stream:
            events = streaming.stream(
                model, job, body, settings.request_timeout, on_complete=cache.store
            )
            handed_off = True
            return StreamingResponse(
                _released(events, job, registry, entry),
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no", **cache.headers},
            )
        work = completions.complete(model, job, body, settings.request_timeout)
        result = await _unless_disconnected(request, work)
        cache.store(result)
        return JSONResponse(result, headers=cache.headers)
    finally:
        if not handed_off:  # a stream frees these when it ends
            if job:
                job.close()
            registry.release(entry)


def _parse(raw: bytes) -> tuple[dict, ChatRequest]:
    """The body as sent (for the cache key) and validated. Parsed here rather than by
    FastAPI so that any content-type (curl's default too) is JSON."""
    try:
        data = json.loads(raw)
        body = ChatRequest.model_validate(data)
    except json.JSONDecodeError:
        raise bad_request("the request body is not valid JSON") from None
    except ValidationError as exc:
        raise bad_request(describe_validation(exc)) from None
    if body.model_extra:
        log.debug("ignoring unknown fields: %s", sorted(body.model_extra))
    return data, body


def _cached_response(completion: dict, body: ChatRequest, cache: CacheLookup):
    if body.stream:  # a JSON body to a stream request would read as an empty stream
        return StreamingResponse(
            streaming.replay(completion, body),
            media_type="text/event-stream",
            headers=cache.headers,
        )
    return JSONResponse(completion, headers=cache.headers)


def _refuse_when_queue_full(model: LoadedModel, incoming: int, max_queue: int) -> None:
    waiting = model.engine.load().waiting
    if waiting + incoming > max_queue:
        raise ChatdError(
            429, f"Model {model.id} has {waiting} requests waiting (limit {max_queue}); "
            "try again shortly", "overloaded", headers={"retry-after": "1"},
        )  # fmt: skip


async def _released(
    events: AsyncIterator[str], job: completions.Job, registry: Registry, entry: ModelEntry
):
    """A stream that frees its sequences and gives its model back however it ends."""
    try:
        async for event in events:
            yield event
    finally:
        await events.aclose()
        job.close()
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
    if not task.done():  # the client left: stop the work and wait until it has let go
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
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
    raise entry.loading_error()


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
        "sequences": asdict(engine.load()) if engine else None,
    }
