"""Where a chat completion runs, behind one interface. The route asks a Backend to open an
Answer, then reads it as SSE or as one JSON body, and closes it once. LocalBackend is this
process's models and engines: lease the model, plan the generation, check the queue, start.
A remote backend (a cluster's replicas) plugs in here with the same two types."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any, Protocol

from chatd.chat.plan import plan
from chatd.config import Settings
from chatd.models.loader import LoadedModel
from chatd.models.registry import Registry
from chatd.protocol.request import ChatRequest
from chatd.server import completions, streaming
from chatd.server.completions import Job
from chatd.server.errors import ChatdError

OnComplete = Callable[[dict[str, Any]], None]


class Answer(Protocol):
    """Started generations, holding what they need (a model lease, KV slots) until closed."""

    headers: dict[str, str]  # what the response adds (a cluster: which replica answers)

    def sse(self, on_complete: OnComplete) -> AsyncGenerator[str]:
        """The stream's events; on_complete gets the whole completion if it finishes."""
        ...

    async def body(self) -> dict[str, Any]:
        """The non-stream body, once every choice is done; raises ChatdError on failure."""
        ...

    def close(self) -> None:
        """Stop what still runs and give back what it holds: idempotent."""
        ...


class Backend(Protocol):
    async def resolve(self, name: str | None) -> str:
        """The id of the model a request names (None: the default); ModelNotFound if none."""
        ...

    async def open(self, model_id: str, body: ChatRequest, wait: bool) -> Answer:
        """Start the request's generations. Raises (holding nothing) if the model cannot
        answer now or the request cannot be served as asked."""
        ...


class LocalBackend:
    def __init__(self, registry: Registry, settings: Settings):
        self.registry, self.settings = registry, settings

    async def resolve(self, name: str | None) -> str:
        return (await self.registry.lookup(name)).id

    async def open(self, model_id: str, body: ChatRequest, wait: bool) -> Answer:
        s, entry = self.settings, await self.registry.lookup(model_id)
        model = await self.registry.acquire(entry, wait)
        try:
            # Before the planning's work (images, template, tokens) and again after it: only
            # the second check is exact, with nothing awaited between it and the submission.
            self._refuse_when_queue_full(model, min(body.n or 1, s.max_n))
            work = await plan(body, model.template, model.engine, s.image_limits, s.max_n)
            self._refuse_when_queue_full(model, len(work.requests))
            # Submitted right after the check, nothing awaited in between.
            running = [model.engine.submit(r) for r in work.requests]
        except BaseException:
            self.registry.release(entry)
            raise
        job = Job(body, model.id, model.engine.runner.name, work.tools, running)
        return LocalAnswer(job, s.request_timeout, lambda: self.registry.release(entry))

    def _refuse_when_queue_full(self, model: LoadedModel, incoming: int) -> None:
        waiting, limit = model.engine.load().waiting, self.settings.max_queue
        if waiting + incoming > limit:
            raise ChatdError(
                429, f"Model {model.id} has {waiting} requests waiting (limit {limit}); "
                "try again shortly", "overloaded", headers={"retry-after": "1"},
            )  # fmt: skip


class LocalAnswer:
    def __init__(self, job: Job, time_limit: float, release: Callable[[], None]):
        self._job, self._time_limit, self._release = job, time_limit, release
        self._closed = False
        self.headers: dict[str, str] = {}

    def sse(self, on_complete: OnComplete) -> AsyncGenerator[str]:
        return streaming.stream(self._job, self._time_limit, on_complete)

    async def body(self) -> dict[str, Any]:
        return await completions.complete(self._job, self._time_limit)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._job.close()
            self._release()
