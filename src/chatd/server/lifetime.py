"""One request's lifetime once its generations have started, in one object: the answer goes
out as SSE or as one JSON body while the client is watched, and it is closed exactly once
however the request ends (finished, failed, timed out, the client gone, or the server
shutting down), which frees its sequences' slots at the next step and gives the model's
lease back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from chatd.server.backend import Answer
from chatd.server.caching import CacheLookup
from chatd.server.errors import ChatdError, client_gone
from chatd.server.streaming import sse

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
SHUTTING_DOWN = "the server is shutting down"


class ShuttingDown(ChatdError):
    def __init__(self):
        super().__init__(503, SHUTTING_DOWN, "shutdown", headers={"retry-after": "1"})


class Shutdown:
    """The server's stop as the running answers see it. Once `end()` is called (the shutdown
    timeout has passed: server/http.py), every answer still running is cut: a stream ends
    with an error event, a JSON answer with a 503, and so their connections close."""

    def __init__(self):
        self.ended = False
        self._deadlines: set[asyncio.Timeout] = set()

    def end(self) -> None:
        """On the event loop."""
        self.ended = True
        now = asyncio.get_running_loop().time()
        for deadline in self._deadlines:
            deadline.reschedule(now)

    @asynccontextmanager
    async def cuts(self) -> AsyncIterator[None]:
        """Raises ShuttingDown in the block at `end()` (at once if it came before). A
        deadline, not a watcher task per answer: ending costs a reschedule."""
        try:
            async with asyncio.timeout(0 if self.ended else None) as deadline:
                self._deadlines.add(deadline)
                try:
                    yield
                finally:
                    self._deadlines.discard(deadline)
        except TimeoutError:
            if deadline.expired():
                raise ShuttingDown() from None
            raise


class AnswerResponse(Response):
    """It owns the answer from the route's return to the last byte sent."""

    def __init__(self, answer: Answer, stream: bool, cache: CacheLookup):
        super().__init__()
        self.answer, self.stream, self.cache = answer, stream, cache

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        shutdown: Shutdown = scope["app"].state.shutdown
        try:
            if self.stream:
                await self._send_stream(scope, receive, send, shutdown)
            else:
                async with shutdown.cuts():
                    body = await _unless_disconnected(receive, self.answer.body())
                self.cache.store(body)
                headers = {**self.answer.headers, **self.cache.headers}
                await JSONResponse(body, headers=headers)(scope, receive, send)
        finally:
            self.answer.close()

    async def _send_stream(
        self, scope: Scope, receive: Receive, send: Send, shutdown: Shutdown
    ) -> None:
        events = _cut_at_shutdown(self.answer.sse(on_complete=self.cache.store), shutdown)
        headers = {**SSE_HEADERS, **self.answer.headers, **self.cache.headers}
        try:  # a client that leaves cancels the response (Starlette watches for it)
            await StreamingResponse(events, media_type="text/event-stream", headers=headers)(
                scope, receive, send
            )
        finally:
            await events.aclose()


async def _cut_at_shutdown(events: AsyncGenerator[str], shutdown: Shutdown) -> AsyncIterator[str]:
    """The events until the server's shutdown ends them: then an error event, and no [DONE]
    (the answer is not whole)."""
    try:
        async with shutdown.cuts():
            async for event in events:
                yield event
    except ShuttingDown:
        yield sse({"error": SHUTTING_DOWN, "error_type": "shutdown"})
    finally:
        await events.aclose()


async def _unless_disconnected(receive: Receive, work) -> dict[str, Any]:
    """The work's result, or 499 if the client goes away first. The work is cancelled and
    awaited however this ends (the shutdown cutting it too), so what it started has let go
    before the answer is closed."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise client_gone()
    return task.result()
