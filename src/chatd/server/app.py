"""The FastAPI app factory: settings and registry in, an ASGI app out."""

from __future__ import annotations

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
            registry.load_in_background()
        yield
        registry.close()

    app = FastAPI(title="chatd", version=__version__, lifespan=lifespan, redirect_slashes=False)
    app.state.settings = settings
    app.state.registry = registry
    app.state.started = time.time()
    errors.install(app)
    app.include_router(router)
    return app
