"""The asyncio face of a loaded model: submit a GenerationRequest, iterate its TokenEvents."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from chatd.engine.runners.base import Runner
from chatd.engine.scheduler import Events, Scheduler
from chatd.engine.sequence import Sequence
from chatd.engine.types import GenerationRequest, TokenEvent


class Engine:
    def __init__(self, runner: Runner):
        self.runner = runner
        self.tokenizer = runner.tokenizer
        self.scheduler = Scheduler(runner, self._on_events)
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self.scheduler.start()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Yields events until one is done. Closing the iterator early aborts the sequence."""
        queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self._queues[request.id] = (asyncio.get_running_loop(), queue)
        self.scheduler.submit(Sequence(request, self.tokenizer))
        done = False
        try:
            while not done:
                event = await queue.get()
                done = event.done
                yield event
        finally:
            self._queues.pop(request.id, None)
            if not done:
                self.scheduler.abort(request.id)

    def close(self) -> None:
        self.scheduler.stop()
        self.runner.close()

    def _on_events(self, events: Events) -> None:
        """Scheduler thread: one wake-up per event loop per step, not one per token."""
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
