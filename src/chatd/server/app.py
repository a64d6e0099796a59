"""The FastAPI app factory: settings, registry and backend in, an ASGI app out, with its
response cache, API-key check and metrics."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import Response

from chatd import __version__
from chatd.cache import ResponseCache, open_cache
from chatd.config import Settings
from chatd.models.registry import ModelEntry, ModelState, Registry
from chatd.server import errors, openapi
from chatd.server.auth import ApiKeyMiddleware, load_keys
from chatd.server.backend import Backend, LocalBackend
from chatd.server.body import BodyGuard
from chatd.server.lifetime import Shutdown
from chatd.server.metrics import Metrics, MetricsMiddleware
from chatd.server.playground import router as playground_router
from chatd.server.routes import router

# The text exposition format; its version parameter is prometheus_client's to choose.
METRICS = {"text/plain": {"schema": {"type": "string"}}}


def create_app(settings: Settings, registry: Registry, backend: Backend | None = None) -> FastAPI:
    """The backend runs the chat completions: this process's engines unless given another."""
    metrics = Metrics()
    registry.listeners.append(_model_metrics(metrics))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if registry.default.state is ModelState.AVAILABLE:
            registry.start_loading(registry.default)
        keep_alive = asyncio.create_task(_keep_alive(registry, settings.keep_alive))
        yield
        keep_alive.cancel()
        registry.close()
        if app.state.cache:
            app.state.cache.close()

    app = FastAPI(title="chatd", version=__version__, lifespan=lifespan, redirect_slashes=False)
    app.state.settings = settings
    app.state.registry = registry
    app.state.backend = backend or LocalBackend(registry, settings)
    app.state.metrics = metrics
    app.state.cache = _cache(settings)
    app.state.started = time.time()
    app.state.shutdown = Shutdown()  # ended by server/http.py once running answers had their time
    errors.install(app)
    openapi.install(app)
    app.include_router(router)
    app.include_router(playground_router)

    metrics_doc = openapi.operation(METRICS, "Prometheus metrics", public=True)

    @app.get("/metrics", openapi_extra=metrics_doc)
    async def prometheus() -> Response:
        stores = {}
        for entry in registry.entries.values():
            if entry.loaded:  # gauges read now, at scrape time
                load = entry.loaded.engine.load()
                metrics.set_sequences(entry.id, load.running, load.waiting)
                if stats := entry.loaded.engine.prefix_stats():
                    stores[entry.id] = stats
        metrics.set_prefix_stores(stores)
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    # The last added is the outermost: metrics see every request, the refused ones too.
    app.add_middleware(BodyGuard, max_bytes=settings.body_limit, timeout=settings.body_timeout)
    app.add_middleware(ApiKeyMiddleware, keys=load_keys(settings.api_keys, settings.api_key_file))
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _cache(settings: Settings) -> ResponseCache | None:
    if settings.cache_url == "off":
        return None
    return open_cache(settings.cache_url, settings.cache_dir, settings.cache_max_bytes)


def _model_metrics(metrics: Metrics):
    """A registry listener: model states, load times, and each engine's token latencies."""

    def on_change(entry: ModelEntry) -> None:
        metrics.set_model_state(entry.id, entry.state.value)
        if (
            entry.state is ModelState.READY
            and entry.loaded
            and entry.loaded.engine.observer is None
        ):
            metrics.observe_load(entry.id, time.monotonic() - entry.load_started)
            entry.loaded.engine.observer = _EngineMetrics(metrics, entry.id)

    return on_change


class _EngineMetrics:
    def __init__(self, metrics: Metrics, model: str):
        self.metrics, self.model = metrics, model

    def first_token(self, seconds: float) -> None:
        self.metrics.observe_ttft(self.model, seconds)

    def next_token(self, seconds: float) -> None:
        self.metrics.observe_itl(self.model, seconds)

    def finished(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.metrics.add_tokens(self.model, prompt_tokens, completion_tokens)

    def step(self, sequences: int) -> None:
        self.metrics.observe_batch(self.model, sequences)

    def drafts(self, drafted: int, accepted: int) -> None:
        self.metrics.add_drafts(self.model, drafted, accepted)


async def _keep_alive(registry: Registry, seconds: float) -> None:
    """--keep-alive: look for idle models now and then, and unload those idle too long."""
    if not seconds:
        return
    while True:
        await asyncio.sleep(min(seconds / 4, 5.0))
        registry.unload_idle(seconds)
