"""A chatd replica: this process's Registry and engines behind LocalBackend, unchanged, with
one generator method the ingress calls through a Serve handle. An answer comes back as:
a Reply first (its status; an error's only item), then for a stream the SSE text joined into
one item per BATCH_S (each handle item costs about 1 ms: one per token would cap a stream
near 1k tokens/s) and the whole completion at its end, for the ingress's cache; for a
non-stream request, the JSON body (or a Reply with the error that cut it)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ray import serve

from chatd.cluster import listen
from chatd.config import Settings
from chatd.models import sources
from chatd.models.registry import ModelEntry, ModelState, Registry
from chatd.protocol.request import ChatRequest, Message
from chatd.server.backend import LocalBackend
from chatd.server.errors import STATUS, ChatdError, as_chatd

BATCH_S = 0.02
listen.on_node_ip()  # this module is imported in every replica process, the ingress's too


@dataclass
class Call:
    """One chat completion asked of a replica. The prefix router reads the first argument's
    `messages` (strings or dicts with a `content`): the conversation's text."""

    model_id: str
    body: ChatRequest
    wait: bool

    @property
    def messages(self) -> list[str]:
        return [_text(m) for m in self.body.messages]


@dataclass
class Reply:
    """An answer's first item: its status and which replica gives it, or why it cannot."""

    replica: str
    error: ChatdError | None = None


class ChatdReplica:
    async def __init__(self, settings: Settings):
        self.name = serve.get_replica_context().replica_id.unique_id
        found = sources.discover(settings.models, settings.models_dir, settings.cache_dir)
        self.registry = Registry(settings, found)
        self.backend = LocalBackend(self.registry, settings)
        self.loads: Counter[str] = Counter()  # model id -> times loaded here
        self.registry.listeners.append(self._count_load)
        await self._ready(self.registry.default)
        # Every replica holds the default: its requests are routed by prefix, not pinned to
        # the first replica that served one.
        await self._model(self.registry.default.id)

    async def _ready(self, entry: ModelEntry) -> None:
        """Routable only once the default model can answer: a failed load fails the replica
        (Serve starts another)."""
        self.registry.start_loading(entry)
        while entry.state is not ModelState.READY:
            if entry.state is ModelState.FAILED:
                raise RuntimeError(f"model {entry.id} failed to load: {entry.error}")
            await asyncio.sleep(0.05)

    def _count_load(self, entry: ModelEntry) -> None:
        if entry.state is ModelState.READY:  # said once per load, at its end
            self.loads[entry.id] += 1

    @serve.multiplexed(max_num_models_per_replica=-1)  # no limit: the Registry decides residency
    async def _model(self, model_id: str) -> ModelEntry:
        """Tells the router which models this replica serves (model affinity)."""
        return await self.registry.lookup(model_id)

    async def chat(self, call: Call) -> AsyncIterator[Reply | str | dict[str, Any]]:
        try:
            await self._model(serve.get_multiplexed_model_id() or call.model_id)
            answer = await self.backend.open(call.model_id, call.body, call.wait)
        except tuple(STATUS) + (ChatdError,) as exc:
            yield Reply(self.name, as_chatd(exc))
            return
        try:
            yield Reply(self.name)
            if call.body.stream:
                completion: dict[str, Any] = {}
                async for text in batched(answer.sse(on_complete=completion.update), BATCH_S):
                    yield text
                if completion:
                    yield completion
            else:
                try:
                    yield await answer.body()
                except ChatdError as exc:
                    yield Reply(self.name, exc)
        finally:
            answer.close()

    def record_routing_stats(self) -> dict[str, Any]:
        """What this replica holds and runs (read by routers, and by the cluster tests)."""
        loaded = [e for e in self.registry.entries.values() if e.loaded]
        loads = [e.loaded.engine.load() for e in loaded]
        return {
            "replica": self.name,
            "models": [e.id for e in loaded],
            "loads": dict(self.loads),
            "running": sum(x.running for x in loads),
            "waiting": sum(x.waiting for x in loads),
        }


def _text(message: Message) -> str:
    if isinstance(message.content, str):
        return message.content
    return "".join(getattr(part, "text", "") for part in message.content or [])


async def batched(events: AsyncIterator[str], interval: float) -> AsyncIterator[str]:
    """The events joined: the first at once, then at most one item per `interval`, each
    holding everything that arrived meanwhile. Closing this closes the source."""
    queue: asyncio.Queue = asyncio.Queue()
    end = object()

    async def pump() -> None:
        try:
            async for event in events:
                queue.put_nowait(event)
        except Exception as exc:
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(end)

    task = asyncio.create_task(pump())
    loop, sent_at = asyncio.get_running_loop(), -interval
    try:
        while True:
            items = [await queue.get()]
            if (pause := sent_at + interval - loop.time()) > 0:
                await asyncio.sleep(pause)
            while not queue.empty():
                items.append(queue.get_nowait())
            text = "".join(i for i in items if isinstance(i, str))
            if text:
                yield text
                sent_at = loop.time()
            for item in items:
                if isinstance(item, Exception):
                    raise item
            if items[-1] is end:
                return
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
