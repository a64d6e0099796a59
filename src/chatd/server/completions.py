"""One chat completion's running generations (a Job), and the non-stream JSON body their
TokenEvents become (the SSE form is in streaming.py)."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from chatd.chat.tools import ToolPlan, parse_tool_calls
from chatd.engine.engine import Generation
from chatd.engine.types import TokenEvent, TokenLogprob
from chatd.protocol.request import ChatRequest
from chatd.protocol.response import Envelope, Usage
from chatd.server.errors import ChatdError


@dataclass
class Job:
    """The generations of one chat completion (one per choice), started, and what framing
    their output needs: the request as asked, the model's names, the tool plan."""

    body: ChatRequest
    model: str
    runner: str
    tools: ToolPlan | None
    running: list[Generation]

    def envelope(self) -> Envelope:
        return Envelope(self.model, self.runner)

    def close(self) -> None:
        """Abort what still runs (idempotent): each frees its slot at the next step."""
        for generation in self.running:
            generation.close()


@dataclass
class Collected:
    """One choice's output so far: its text, logprobs and latest event."""

    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    last: TokenEvent | None = None

    def add(self, event: TokenEvent) -> None:
        self.text.append(event.text)
        self.logprobs.extend(event.logprobs)
        self.last = event


async def complete(job: Job, time_limit: float = 0) -> dict[str, Any]:
    """Run every choice to its end and build the non-stream body."""
    try:
        async with asyncio.timeout(time_limit or None):
            choices = await asyncio.gather(*(_collect(g) for g in job.running))
    except TimeoutError:
        raise ChatdError(504, timed_out(time_limit), "timeout") from None
    return completion_body(job, job.envelope(), choices)


def completion_body(job: Job, envelope: Envelope, choices: list[Collected]) -> dict[str, Any]:
    """The non-stream body: also what a finished stream leaves in the response cache."""
    out = []
    for i, c in enumerate(choices):
        message: dict = {"role": "assistant", "content": "".join(c.text)}
        finish = c.last.finish_reason
        if job.tools:
            message["content"], calls = parse_tool_calls(message["content"])
            if calls:
                message["tool_calls"], finish = calls, tool_finish(finish)
        out.append(
            {
                "index": i,
                "message": message,
                "logprobs": logprobs_body(c.logprobs) if job.body.logprobs else None,
                "finish_reason": finish,
            }
        )
    usage = usage_of([c.last for c in choices])
    return envelope.completion(out, usage)


def tool_finish(finish: str | None) -> str | None:
    """A call that ended by itself is a tool_calls finish; one cut short stays `length`."""
    return "tool_calls" if finish == "stop" else finish


def timed_out(limit: float) -> str:
    return f"the request ran past its time limit of {limit:g} s and was stopped"


async def _collect(generation: Generation) -> Collected:
    choice = Collected()
    async with aclosing(generation) as events:
        async for event in events:
            if event.error:
                raise ChatdError(500, event.error, "generation")
            choice.add(event)
    return choice


def usage_of(finals: list[TokenEvent | None]) -> Usage:
    """The prompt counts once however many choices share it."""
    finals = [f for f in finals if f]
    if not finals:
        return Usage()
    return Usage(
        prompt_tokens=finals[0].prompt_tokens,
        completion_tokens=sum(f.completion_tokens for f in finals),
        cached_tokens=min(f.cached_tokens for f in finals),
    )


def logprobs_body(items: list[TokenLogprob]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": t.token,
                "logprob": t.logprob,
                "bytes": t.bytes,
                "top_logprobs": [
                    {"token": c.token, "logprob": c.logprob, "bytes": c.bytes} for c in t.top
                ],
            }
            for t in items
        ]
    }
