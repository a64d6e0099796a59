"""One chat completion as an SSE stream: role in each choice's first delta only, tool calls
in fragments, usage only when asked, then exactly `data: [DONE]`. A cached completion is
replayed in the same framing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import aclosing
from typing import Any

import orjson

from chatd.chat.tools import ToolCallStream
from chatd.engine.engine import Generation
from chatd.engine.types import TokenEvent
from chatd.protocol.request import ChatRequest
from chatd.protocol.response import Envelope
from chatd.server.completions import (
    Collected,
    Job,
    completion_body,
    logprobs_body,
    timed_out,
    tool_finish,
    usage_of,
)


def sse(payload: dict[str, Any] | str) -> str:
    """One event per line pair; the end marker is exactly `data: [DONE]`. orjson writes the
    chunk (compact, UTF-8 as it is) several times faster than json.dumps: one per token."""
    data = payload if isinstance(payload, str) else orjson.dumps(payload, option=_KEYS).decode()
    return f"data: {data}\n\n"


_KEYS = orjson.OPT_NON_STR_KEYS  # as json.dumps: an int key becomes a string


DONE = sse("[DONE]")


async def stream(
    job: Job,
    time_limit: float = 0,
    on_complete: Callable[[dict[str, Any]], None] | None = None,
) -> AsyncGenerator[str]:
    """The SSE events; on_complete gets the whole completion once every choice is done."""
    try:
        async with asyncio.timeout(time_limit or None):
            async for event in _stream(job, on_complete):
                yield event
    except TimeoutError:
        yield sse({"error": timed_out(time_limit), "error_type": "timeout"})


async def _stream(job: Job, on_complete) -> AsyncIterator[str]:
    body = job.body
    frame = _Framer(job.envelope(), body)
    n = len(job.running)
    held = [ToolCallStream(job.tools.forced) for _ in range(n)] if job.tools else []
    collected = [Collected() for _ in range(n)]
    async with aclosing(_merge(job.running)) as events:
        async for index, event in events:
            if event.error:
                yield sse({"error": event.error, "error_type": "generation"})
                return
            collected[index].add(event)
            text = held[index].feed(event.text) if held else event.text
            logprobs = logprobs_body(event.logprobs) if body.logprobs and event.logprobs else None
            finish = event.finish_reason
            if event.done and held:
                content, calls = held[index].finish()
                text += content
                if calls:
                    if text:
                        yield frame.chunk(index, {"content": text}, logprobs)
                        text, logprobs = "", None
                    for piece in call_deltas(calls):
                        yield frame.chunk(index, piece)
                    finish = tool_finish(finish)
            if text or logprobs or event.done:
                yield frame.chunk(index, {"content": text}, logprobs, finish)
    if frame.include_usage:
        yield sse(frame.envelope.usage_chunk(usage_of([c.last for c in collected]).body()))
    yield DONE
    if on_complete:
        on_complete(completion_body(job, frame.envelope, collected))


class _Framer:
    """Chunks of one response: the role goes in each choice's first delta only (OpenAI's
    stream helper concatenates repeated fields)."""

    def __init__(self, envelope: Envelope, body: ChatRequest):
        self.envelope = envelope
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)
        self._started: set[int] = set()

    def chunk(self, index: int, delta: dict, logprobs=None, finish: str | None = None) -> str:
        if index not in self._started:
            self._started.add(index)
            delta = {"role": "assistant", **delta}
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return sse(self.envelope.chunk([choice], self.include_usage))


def replay(completion: dict[str, Any], body: ChatRequest) -> Iterator[str]:
    """A finished (cached) completion as the stream it would have been."""
    envelope = Envelope(
        completion["model"], "", completion["id"], completion["created"],
        fingerprint=completion["system_fingerprint"],
    )  # fmt: skip
    frame = _Framer(envelope, body)
    for choice in completion["choices"]:
        i, message = choice["index"], choice["message"]
        calls = message.get("tool_calls") or []
        yield frame.chunk(i, {"content": message.get("content") or ""}, choice["logprobs"])
        for piece in call_deltas(calls):
            yield frame.chunk(i, piece)
        yield frame.chunk(i, {"content": ""}, None, choice["finish_reason"])
    if frame.include_usage:
        yield sse(envelope.usage_chunk(completion["usage"]))
    yield DONE


def call_deltas(calls: list[dict], piece: int = 24) -> Iterator[dict]:
    """Each call: id, type and name in its first fragment only, then the arguments in pieces."""
    for i, call in enumerate(calls):
        f = call["function"]
        yield {"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                               "function": {"name": f["name"], "arguments": ""}}]}  # fmt: skip
        args = f["arguments"]
        for at in range(0, len(args), piece):
            yield {"tool_calls": [{"index": i, "function": {"arguments": args[at : at + piece]}}]}


async def _merge(generations: list[Generation]) -> AsyncIterator[tuple[int, TokenEvent]]:
    """The events of every choice, interleaved as they come."""
    if len(generations) == 1:
        async with aclosing(generations[0]) as events:
            async for event in events:
                yield 0, event
        return
    queue: asyncio.Queue[tuple[int, TokenEvent]] = asyncio.Queue()

    async def pump(index: int, generation: Generation) -> None:
        async with aclosing(generation) as events:
            async for event in events:
                queue.put_nowait((index, event))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(generations)]
    try:
        remaining = len(tasks)
        while remaining:
            index, event = await queue.get()
            remaining -= event.done
            yield index, event
    finally:
        for task in tasks:
            task.cancel()
