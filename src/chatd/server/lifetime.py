"""One request's lifetime once its generations have started, in one object: the answer goes
out as SSE or as one JSON body while the client is watched, and it is closed exactly once
however the request ends (finished, failed, timed out, or the client gone), which frees its
sequences' slots at the next step and gives the model's lease back."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from chatd.server.backend import Answer
from chatd.server.caching import CacheLookup
from chatd.server.errors import ChatdError

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class AnswerResponse(Response):
    """It owns the answer from the route's return to the last byte sent."""

    def __init__(self, answer: Answer, stream: bool, cache: CacheLookup):
        super().__init__()
        self.answer, self.stream, self.cache = answer, stream, cache

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if self.stream:
                await self._send_stream(scope, receive, send)
            else:
                body = await _unless_disconnected(receive, self.answer.body())
                self.cache.store(body)
                await JSONResponse(body, headers=self.cache.headers)(scope, receive, send)
        finally:
            self.answer.close()

    async def _send_stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        events = self.answer.sse(on_complete=self.cache.store)
        headers = {**SSE_HEADERS, **self.cache.headers}
        try:  # a client that leaves cancels the response (Starlette watches for it)
            await StreamingResponse(events, media_type="text/event-stream", headers=headers)(
                scope, receive, send
            )
        finally:
            await events.aclose()


async def _unless_disconnected(receive: Receive, work) -> dict[str, Any]:
    """The work's result, or 499 if the client goes away first (the work is cancelled and
    awaited, so what it started has let go before the answer is closed)."""
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
        raise ChatdError(499, "client closed the request", "cancelled")
    return task.result()
