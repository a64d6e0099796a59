"""The FastAPI app factory: settings and registry in, an ASGI app out."""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI

from chatd import __version__
from chatd.config import Settings
from chatd.models.registry import ModelState, Registry
from chatd.server import errors
from chatd.server.routes import router


def create_app(settings: Settings, registry: Registry) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if registry.default.state is ModelState.AVAILABLE:
            registry.start_loading(registry.default)
        keep_alive = asyncio.create_task(_keep_alive(registry, settings.keep_alive))
        yield
        keep_alive.cancel()
        registry.close()

    app = FastAPI(title="chatd", version=__version__, lifespan=lifespan, redirect_slashes=False)
    app.state.settings = settings
    app.state.registry = registry
    app.state.started = time.time()
    errors.install(app)
    app.include_router(router)
    return app


async def _keep_alive(registry: Registry, seconds: float) -> None:
    """--keep-alive: look for idle models now and then, and unload those idle too long."""
    if not seconds:
        return
    while True:
        await asyncio.sleep(min(seconds / 4, 5.0))
        registry.unload_idle(seconds)
