"""The HTTP surface: every URL form both clients use (CLIENTS.md), with and without a slash."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from chatd import __version__
from chatd.cache.keys import parse_flag
from chatd.models.registry import ModelEntry, ModelState, Registry
from chatd.protocol.request import MAX_STOP, MAX_TOP_LOGPROBS, ChatRequest
from chatd.protocol.response import Health, ModelList, ServerInfo
from chatd.server import openapi, streaming
from chatd.server.backend import Backend
from chatd.server.body import parse_json
from chatd.server.caching import CacheLookup
from chatd.server.errors import bad_request, describe_validation
from chatd.server.lifetime import SSE_HEADERS, AnswerResponse

log = logging.getLogger(__name__)
router = APIRouter()

CHAT_PATHS = {  # path -> its operationId in /openapi.json
    "/v1/chat/completions": "chat_completions",
    "/chat/completions": "chat_completions_unversioned",
    "/models/{org}/{name}/v1/chat/completions": "model_chat_completions",
}


def _registry(request: Request) -> Registry:
    return request.app.state.registry


async def chat_completions(request: Request):
    """parse -> find the model -> cache lookup -> start (lease, plan, submit) -> answer."""
    raw = await request.body()
    # A large body takes a while to parse and validate: not on the event loop.
    data, body = await asyncio.to_thread(_parse, raw) if len(raw) > 2**18 else _parse(raw)
    backend: Backend = request.app.state.backend
    org, name = request.path_params.get("org"), request.path_params.get("name")
    model_id = await backend.resolve(f"{org}/{name}" if org else body.model)  # the path wins
    cache = CacheLookup.for_request(request, model_id, data)
    if cached := cache.lookup():
        return _cached_response(cached, body, cache)
    wait = parse_flag(request.headers.get("x-wait-for-model"), default=False)
    answer = await backend.open(model_id, body, wait)
    return AnswerResponse(answer, bool(body.stream), cache)


def _parse(raw: bytes) -> tuple[dict, ChatRequest]:
    """The body as sent (for the cache key) and validated. Parsed here rather than by
    FastAPI so that any content-type (curl's default too) is JSON."""
    data = parse_json(raw)
    try:
        body = ChatRequest.model_validate(data)
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
            headers={**SSE_HEADERS, **cache.headers},
        )
    return JSONResponse(completion, headers=cache.headers)


for _path, _operation in CHAT_PATHS.items():
    for _p in (_path, _path + "/"):
        router.add_api_route(
            _p,
            chat_completions,
            methods=["POST"],
            include_in_schema=_p == _path,
            operation_id=_operation,
            openapi_extra=openapi.chat_operation(model_in_path="{org}" in _path),
        )


@router.get(
    "/health",
    openapi_extra=openapi.operation(Health, "The default model is ready", 503, public=True),
)
async def health(request: Request):
    registry = _registry(request)
    entry = registry.default
    if entry.state is ModelState.READY:
        return {"status": "ok", "model": entry.id}
    raise entry.not_ready(registry.settings.load_retry)  # what a request would get


@router.get("/v1/models", openapi_extra=openapi.operation(ModelList, "The models served"))
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
                **_progress(e),
                **({"error": e.error} if e.state is ModelState.FAILED else {}),
            }
            for e in registry.entries.values()
        ],
    }


def _progress(entry: ModelEntry) -> dict:
    """How far a model still coming is: bytes on disk while it downloads, then its load."""
    if entry.state is ModelState.DOWNLOADING and entry.download:
        done, total = entry.download.done, entry.download.total
        return {
            "downloaded_bytes": done,
            "total_bytes": total,
            "estimated_time": entry.estimated_time(),
        }
    if entry.state is ModelState.LOADING:
        return {"estimated_time": entry.estimated_time()}
    return {}


@router.get("/info", openapi_extra=openapi.operation(ServerInfo, "The default model and limits"))
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
