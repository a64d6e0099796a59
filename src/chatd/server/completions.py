"""One chat completion: a ChatRequest becomes GenerationRequests (one per choice), whose
TokenEvents become one JSON body or an SSE stream."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field, replace

from chatd.chat.prompt import build_prompt
from chatd.chat.structured import response_format_grammar
from chatd.chat.tools import ToolCallStream, ToolPlan, constraint_for, parse_tool_calls, plan_tools
from chatd.config import Settings
from chatd.engine.constraints import Constraint, GrammarError
from chatd.engine.types import GenerationRequest, SamplingParams, TokenEvent, TokenLogprob
from chatd.models.registry import LoadedModel
from chatd.server.errors import ChatdError, bad_request
from chatd.server.protocol import ChatRequest
from chatd.server.responses import DONE, Envelope, Usage, logprobs_body, sse

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One chat completion's generations (a request per choice) and how to read them."""

    requests: list[GenerationRequest]
    tools: ToolPlan | None


def prepare(body: ChatRequest, model: LoadedModel, settings: Settings) -> Job:
    """Validate what needs the model (context, vocabulary) and build one request per choice."""
    runner = model.engine.runner
    try:
        tools = plan_tools(body, model.template.source)
        prompt = build_prompt(body.messages, model.template, runner.tokenizer, tools)
        bias = body.bias_map(runner.tokenizer.n_vocab)
    except ValueError as exc:
        raise bad_request(str(exc)) from exc
    constraint = _constraint(body, tools, runner.tokenizer)
    room = runner.n_ctx - len(prompt)
    if room < 1:
        raise bad_request(
            f"the prompt is {len(prompt)} tokens long, but this model's context holds "
            f"{runner.n_ctx} tokens for prompt and answer together: at most {runner.n_ctx - 1} "
            "prompt tokens fit"
        )
    n = body.n or 1
    if n > settings.max_n:
        raise bad_request(f"n: at most {settings.max_n} choices per request, got {n}")
    sampling = SamplingParams(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=body.top_p or 1.0,
        top_k=body.top_k or 0,
        min_p=body.min_p or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        repetition_penalty=body.repetition_penalty or 1.0,
        logit_bias=bias,
        seed=body.seed,
        logprobs=bool(body.logprobs),
        top_logprobs=body.top_logprobs or 0,
    )
    # The answer may use what the context leaves; a larger max_tokens ends with "length" there.
    max_tokens = min(body.output_limit or room, room)
    rid = uuid.uuid4().hex
    requests = [
        GenerationRequest(
            id=f"{rid}-{i}",
            prompt=prompt,
            # Seeded choices differ from each other yet repeat from one request to the next.
            sampling=sampling if body.seed is None else replace(sampling, seed=body.seed + i),
            max_tokens=max_tokens,
            stop=tuple(body.stop),
            constraint=constraint.copy() if constraint else None,
        )
        for i in range(n)
    ]
    return Job(requests, tools)


def _constraint(body: ChatRequest, tools: ToolPlan | None, tokenizer):
    fmt = body.response_format
    if tools:
        if fmt and fmt.type != "text":
            raise bad_request(
                "response_format: cannot be combined with tools; use one or the other"
            )
        try:
            return constraint_for(tools, tokenizer)
        except GrammarError as exc:
            raise bad_request(f"tools: a tool's parameters schema is not usable: {exc}") from exc
    try:
        grammar = response_format_grammar(fmt)
        return Constraint(tokenizer.grammar_tokenizer, grammar) if grammar else None
    except GrammarError as exc:
        raise bad_request(f"response_format: {exc}") from exc


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    last: TokenEvent | None = None


async def complete(model: LoadedModel, job: Job, body: ChatRequest, time_limit: float = 0):
    """Run every choice to its end and build the non-stream body."""
    try:
        async with asyncio.timeout(time_limit or None):
            choices = await asyncio.gather(*(_collect(model, r) for r in job.requests))
    except TimeoutError:
        raise ChatdError(504, _timed_out(time_limit), "timeout") from None
    usage = _usage([c.last for c in choices])
    out = []
    for i, c in enumerate(choices):
        message: dict = {"role": "assistant", "content": "".join(c.text)}
        finish = c.last.finish_reason
        if job.tools:
            message["content"], calls = parse_tool_calls(message["content"])
            if calls:
                message["tool_calls"], finish = calls, _tool_finish(finish)
        out.append(
            {
                "index": i,
                "message": message,
                "logprobs": logprobs_body(c.logprobs) if body.logprobs else None,
                "finish_reason": finish,
            }
        )
    return Envelope(model.id, model.engine.runner.name).completion(out, usage)


def _tool_finish(finish: str | None) -> str | None:
    """A call that ended by itself is a tool_calls finish; one cut short stays `length`."""
    return "tool_calls" if finish == "stop" else finish


async def _collect(model: LoadedModel, request: GenerationRequest) -> _Choice:
    choice = _Choice()
    async with aclosing(model.engine.generate(request)) as events:
        async for event in events:
            if event.error:
                raise ChatdError(500, event.error, "generation")
            choice.text.append(event.text)
            choice.logprobs.extend(event.logprobs)
            choice.last = event
    return choice


async def stream(
    model: LoadedModel, job: Job, body: ChatRequest, time_limit: float = 0
) -> AsyncIterator[str]:
    """SSE: role in each choice's first delta only, usage only when asked, then [DONE]."""
    try:
        async with asyncio.timeout(time_limit or None):
            async for event in _stream(model, job, body):
                yield event
    except TimeoutError:
        yield sse({"error": _timed_out(time_limit), "error_type": "timeout"})


def _timed_out(limit: float) -> str:
    return f"the request ran past its time limit of {limit:g} s and was stopped"


async def _stream(model: LoadedModel, job: Job, body: ChatRequest) -> AsyncIterator[str]:
    envelope = Envelope(model.id, model.engine.runner.name)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    started: set[int] = set()
    held = (
        {i: ToolCallStream(job.tools.forced) for i in range(len(job.requests))} if job.tools else {}
    )
    finals: list[TokenEvent] = []

    def chunk(index: int, delta: dict, logprobs=None, finish: str | None = None) -> str:
        if index not in started:
            started.add(index)
            delta = {"role": "assistant", **delta}
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return sse(envelope.chunk([choice], include_usage))

    async with aclosing(_merge(model, job.requests)) as events:
        async for index, event in events:
            if event.error:
                yield sse({"error": event.error, "error_type": "generation"})
                return
            text = held[index].feed(event.text) if held else event.text
            logprobs = logprobs_body(event.logprobs) if body.logprobs and event.logprobs else None
            finish = event.finish_reason
            if event.done and held:
                content, calls = held[index].finish()
                text += content
                if calls:
                    if text:
                        yield chunk(index, {"content": text}, logprobs)
                        text, logprobs = "", None
                    for piece in _call_deltas(calls):
                        yield chunk(index, piece)
                    finish = _tool_finish(finish)
            if text or logprobs or event.done:
                yield chunk(index, {"content": text}, logprobs, finish)
            if event.done:
                finals.append(event)
    if include_usage:
        yield sse(envelope.usage_chunk(_usage(finals)))
    yield DONE


def _call_deltas(calls: list[dict], piece: int = 24):
    """Each call: id, type and name in its first fragment only, then the arguments in pieces."""
    for i, call in enumerate(calls):
        f = call["function"]
        yield {"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                               "function": {"name": f["name"], "arguments": ""}}]}  # fmt: skip
        args = f["arguments"]
        for at in range(0, len(args), piece):
            yield {"tool_calls": [{"index": i, "function": {"arguments": args[at : at + piece]}}]}


async def _merge(
    model: LoadedModel, requests: list[GenerationRequest]
) -> AsyncIterator[tuple[int, TokenEvent]]:
    """The events of every choice, interleaved as they come."""
    if len(requests) == 1:
        async with aclosing(model.engine.generate(requests[0])) as events:
            async for event in events:
                yield 0, event
        return
    queue: asyncio.Queue[tuple[int, TokenEvent]] = asyncio.Queue()

    async def pump(index: int, request: GenerationRequest) -> None:
        async with aclosing(model.engine.generate(request)) as events:
            async for event in events:
                queue.put_nowait((index, event))

    tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(requests)]
    try:
        remaining = len(tasks)
        while remaining:
            index, event = await queue.get()
            remaining -= event.done
            yield index, event
    finally:
        for task in tasks:
            task.cancel()


def _usage(finals: list[TokenEvent | None]) -> Usage:
    """The prompt counts once however many choices share it."""
    finals = [f for f in finals if f]
    if not finals:
        return Usage()
    return Usage(
        prompt_tokens=finals[0].prompt_tokens,
        completion_tokens=sum(f.completion_tokens for f in finals),
        cached_tokens=min(f.cached_tokens for f in finals),
    )
