"""The cluster's HTTP side: chatd's own app (auth, metrics, errors, the playground, /v1/models,
/health, /info, the response cache) with a backend that runs each chat completion on a
replica through a Serve handle. The handle routes by model id (multiplexing: the replicas
holding the model) and, with --prefix-routing, by the conversation's prefix (the replica that
cached it). The answering replica is named in the `x-chatd-replica` header.

A replica lost before an answer's first text is asked again once, elsewhere (nothing was
sent yet); after it, the stream ends with chatd's error event, `error_type: replica_lost`,
never spliced with another generation. A non-stream request is asked again once."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncGenerator, Callable
from functools import partial
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from chatd.cluster.replica import Call, Reply
from chatd.config import Settings
from chatd.models import sources
from chatd.models.registry import ModelEntry, ModelState, Registry
from chatd.protocol.request import ChatRequest
from chatd.server.app import create_app
from chatd.server.backend import OnComplete
from chatd.server.errors import ChatdError
from chatd.server.streaming import sse

REPLICA_HEADER = "x-chatd-replica"
TRIES = 2  # the first ask, and once more if its replica is lost before any text
LOST = RayActorError  # the replica's process died or cannot be reached
WATCH_S = 1.0  # how often the ingress asks Serve whether a replica runs


def lost() -> ChatdError:
    message = "the replica serving this request was lost; try again"
    return ChatdError(503, message, "replica_lost", {"retry-after": "1"})


class Catalogue(Registry):
    """The ingress's models: ids, aliases and 404s as a Registry finds them, nothing loaded
    or downloaded here. The default is ready while a replica runs (each holds it), and
    loading while none does, so /health says 503 when no replica could answer; the
    replicas load the other models, and pull Hub models, on first use."""

    def __init__(
        self,
        settings: Settings,
        found: list[sources.ModelSource],
        replicas_running: Callable[[], int],
    ):
        super().__init__(settings, found)
        self._replicas_running, self._closed = replicas_running, threading.Event()

    def start_loading(self, entry: ModelEntry) -> None:
        if entry is self.default:
            entry.state, entry.load_started = ModelState.LOADING, time.monotonic()
            threading.Thread(target=self._watch, daemon=True).start()
        else:
            entry.state = ModelState.READY
        self._notify(entry)

    def _watch(self) -> None:
        """Serve's replica states, every WATCH_S (a call to its controller: a thread's work)."""
        entry = self.default
        while not self._closed.wait(WATCH_S):
            try:
                up = self._replicas_running() > 0
            except Exception:  # the controller is away (restarting): keep what was known
                continue
            state = ModelState.READY if up else ModelState.LOADING
            if entry.state is not state:
                entry.state, entry.load_started = state, time.monotonic()
                self._notify(entry)

    def close(self) -> None:
        self._closed.set()
        super().close()

    def _download(self, entry: ModelEntry) -> None:
        pass

    def unload_idle(self, older_than: float) -> None:
        pass


class RayBackend:
    def __init__(self, catalogue: Registry, replicas: DeploymentHandle):
        self.catalogue, self._replicas = catalogue, replicas
        self._handles: dict[str, DeploymentHandle] = {}

    async def resolve(self, name: str | None) -> str:
        return (await self.catalogue.lookup(name)).id

    async def open(self, model_id: str, body: ChatRequest, wait: bool) -> RayAnswer:
        return await self.start(Call(model_id, body, wait), TRIES)

    async def start(self, call: Call, tries: int) -> RayAnswer:
        """The call on a replica, up to `tries` times while replicas are lost before their
        first item (its status): an error status is raised as the replica's ChatdError."""
        handle = self._handle(call.model_id)
        while tries:
            tries -= 1
            stream = handle.chat.remote(call)
            try:
                head: Reply = await stream.__anext__()
            except LOST:
                continue
            if head.error:
                head.error.headers = {**head.error.headers, REPLICA_HEADER: head.replica}
                raise head.error
            return RayAnswer(self, call, stream, head.replica, tries)
        raise lost()

    def _handle(self, model_id: str) -> DeploymentHandle:
        if model_id not in self._handles:
            self._handles[model_id] = self._replicas.options(
                stream=True, multiplexed_model_id=model_id
            )
        return self._handles[model_id]


class RayAnswer:
    """An answer running on a replica: the handle's stream after its first item."""

    def __init__(
        self,
        backend: RayBackend,
        call: Call,
        stream: DeploymentResponseGenerator,
        replica: str,
        tries: int,
    ):
        self._backend, self._call, self._closed = backend, call, False
        self._take(stream, replica, tries)

    def _take(self, stream: DeploymentResponseGenerator, replica: str, tries: int) -> None:
        self._stream, self._tries = stream, tries
        self.headers = {REPLICA_HEADER: replica}

    async def _again(self) -> None:
        """The call once more on another replica; raises if it was asked enough."""
        self._stream.cancel()
        if not self._tries:
            raise lost()
        again = await self._backend.start(self._call, self._tries)
        self._take(again._stream, again.headers[REPLICA_HEADER], again._tries)

    async def sse(self, on_complete: OnComplete) -> AsyncGenerator[str]:
        sent = False
        while True:
            try:
                async for item in self._stream:
                    if isinstance(item, str):
                        sent = True
                        yield item
                    else:
                        on_complete(item)
                return
            except LOST:
                if sent:
                    yield sse(lost().body())
                    return
            try:
                await self._again()
            except ChatdError as exc:
                yield sse(exc.body())
                return

    async def body(self) -> dict[str, Any]:
        while True:
            try:
                item = await self._stream.__anext__()
            except LOST:
                await self._again()
                continue
            if isinstance(item, Reply):
                raise item.error
            return item

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._stream.cancel()  # the replica's generator ends: its sequences are freed


@serve.ingress()
class ChatdIngress:
    """chatd's app, built in the ingress replica (`__serve_build_asgi_app__`: a FastAPI app
    handed to `serve.ingress` at build time is pickled and loses its routes' `self`)."""

    def __init__(self, settings: Settings, replicas: DeploymentHandle):
        self.settings, self.replicas = settings, replicas

    def __serve_build_asgi_app__(self):
        s = self.settings
        found = sources.discover(s.models, s.models_dir, s.cache_dir)
        catalogue = Catalogue(s, found, partial(replicas_running, self.replicas))
        return create_app(s, catalogue, RayBackend(catalogue, self.replicas))


def replicas_running(replicas: DeploymentHandle) -> int:
    """How many of the handle's deployment's replicas Serve says are running."""
    app = serve.status().applications[replicas.app_name]
    states = app.deployments[replicas.deployment_name].replica_states
    return states.get("RUNNING", 0)
