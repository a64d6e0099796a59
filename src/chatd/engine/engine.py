"""The asyncio face of a loaded model: submit a GenerationRequest, iterate its TokenEvents.

The scheduler runs on a thread of its own (SchedulerThread); `Engine(runner, start=False)`
leaves it to the caller, who runs each step with `Engine.step` (tests, a future backend).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from chatd.engine.constraints import Grammars
from chatd.engine.prefix_store import PrefixStats, PrefixStore
from chatd.engine.runners.base import Runner
from chatd.engine.scheduler import Events, Scheduler, SchedulerThread
from chatd.engine.sequence import Sequence
from chatd.engine.speculative import Speculation
from chatd.engine.types import GenerationRequest, Grammar, Load, TokenEvent


class Observer(Protocol):
    """Whoever watches a model's latencies and token counts (the metrics)."""

    def first_token(self, seconds: float) -> None: ...
    def next_token(self, seconds: float) -> None: ...
    def finished(self, prompt_tokens: int, completion_tokens: int) -> None: ...
    def step(self, sequences: int) -> None: ...  # called on the scheduler thread
    def drafts(self, drafted: int, accepted: int) -> None: ...  # the same, when it drafted


class Generation:
    """One submitted sequence's events, until one is done. Closing it early aborts the
    sequence (idempotent), so a client that leaves frees its slot at the next step."""

    def __init__(self, engine: Engine, request_id: str, queue: asyncio.Queue[TokenEvent]):
        self._engine, self.id, self._queue = engine, request_id, queue
        self._done = False
        self._last: float | None = None  # when the previous event arrived
        self._started = time.monotonic()

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> TokenEvent:
        if self._done:
            raise StopAsyncIteration
        event = await self._queue.get()
        self._observe(event)
        if event.done:
            self._done = True
            self._engine.forget(self.id)
        return event

    def _observe(self, event: TokenEvent) -> None:
        observer, now = self._engine.observer, time.monotonic()
        if observer is None:
            return
        if self._last is None:
            observer.first_token(now - self._started)
        else:
            observer.next_token(now - self._last)
        self._last = now
        if event.done:
            observer.finished(event.prompt_tokens, event.completion_tokens)

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._engine.forget(self.id)
            self._engine.scheduler.abort(self.id)


class Engine:
    def __init__(
        self,
        runner: Runner,
        start: bool = True,
        prefix_cache_bytes: int = 0,
        speculation: Speculation | None = None,
    ):
        """prefix_cache_bytes: the host memory the prefix store may hold (0: no store);
        speculation: how to draft (None: no drafts)."""
        self.runner = runner
        self.tokenizer = runner.tokenizer
        self.grammars = Grammars(runner.tokenizer)
        store = PrefixStore(prefix_cache_bytes) if prefix_cache_bytes else None
        self.scheduler = Scheduler(runner, store, speculation)
        self._thread = SchedulerThread(self.scheduler, self._on_events)
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self.observer: Observer | None = None
        if start:
            self._thread.start()

    def check(self, grammar: Grammar, max_tokens: int | None = None) -> None:
        """Raises GrammarError for a grammar this model's tokenizer cannot follow, or whose
        shortest answer takes more than max_tokens."""
        self.grammars.check(grammar, max_tokens)

    def submit(self, request: GenerationRequest) -> Generation:
        """Queue the request now (synchronously: a caller can check capacity and submit
        with nothing in between) and return its events."""
        grammar = request.grammar
        seq = Sequence(request, self.tokenizer, grammar and self.grammars.constraint(grammar))
        queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self._queues[request.id] = (asyncio.get_running_loop(), queue)
        self.scheduler.submit(seq)
        return Generation(self, request.id, queue)

    def load(self) -> Load:
        return self.scheduler.load()

    def prefix_stats(self) -> PrefixStats | None:
        """What the prefix store holds and restored (None: no store); read from any thread."""
        store = self.scheduler.prefix_store
        return store and store.stats()

    def step(self) -> None:
        """One scheduler step on this thread, its events delivered: for an engine made with
        start=False (never beside the thread)."""
        self._on_events(self.scheduler.step())

    def forget(self, request_id: str) -> None:
        self._queues.pop(request_id, None)

    def close(self) -> None:
        self._thread.stop()
        self.runner.close()

    def _on_events(self, events: Events) -> None:
        """On the stepping thread: one wake-up per event loop per step, not one per token."""
        if self.observer is not None and events:
            self.observer.step(len(events))
            drafted, accepted = self.scheduler.take_drafts()
            if drafted:
                self.observer.drafts(drafted, accepted)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, TokenEvent]]] = {}
        for seq, event in events:
            target = self._queues.get(seq.id)
            if target:
                by_loop.setdefault(target[0], []).append((target[1], event))
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_deliver, items)


def _deliver(items: list[tuple[asyncio.Queue, TokenEvent]]) -> None:
    for queue, event in items:
        queue.put_nowait(event)
