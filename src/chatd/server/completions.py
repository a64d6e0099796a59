"""One chat completion: a ChatRequest becomes GenerationRequests (one per choice), whose
TokenEvents become the JSON body (the SSE form is in streaming.py)."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import aclosing
from dataclasses import dataclass, field, replace

from chatd.chat.prompt import build_prompt
from chatd.chat.structured import response_format_grammar
from chatd.chat.tools import ToolPlan, calls_grammar, parse_tool_calls, plan_tools
from chatd.config import Settings
from chatd.engine.constraints import GrammarError
from chatd.engine.engine import Generation
from chatd.engine.types import (
    GenerationRequest,
    Grammar,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
)
from chatd.models.loader import LoadedModel
from chatd.server.errors import ChatdError, bad_request
from chatd.server.protocol import ChatRequest
from chatd.server.responses import Envelope, Usage, logprobs_body


@dataclass
class Job:
    """One chat completion's generations (a request per choice) and how to read them."""

    requests: list[GenerationRequest]
    tools: ToolPlan | None
    running: list[Generation] = field(default_factory=list)

    def start(self, model: LoadedModel) -> None:
        """Submit every choice at once, with no await in between (see the queue check)."""
        self.running = [model.engine.submit(r) for r in self.requests]

    def close(self) -> None:
        for generation in self.running:
            generation.close()


async def prepare(body: ChatRequest, model: LoadedModel, settings: Settings) -> Job:
    """Validate what needs the model (context, vocabulary), fetch the images, and build one
    request per choice."""
    runner = model.engine.runner
    try:
        tools = plan_tools(body, model.template.source)
        built = await build_prompt(
            body.messages, model.template, runner, tools, settings.image_limits
        )
        bias = body.bias_map(runner.tokenizer.n_vocab)
    except ValueError as exc:
        raise bad_request(str(exc)) from exc
    prompt = built.tokens
    grammar = _grammar(body, tools, model)
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
            grammar=grammar,
            images=built.images,
        )
        for i in range(n)
    ]
    return Job(requests, tools)


def _grammar(body: ChatRequest, tools: ToolPlan | None, model: LoadedModel) -> Grammar | None:
    fmt = body.response_format
    if tools:
        if fmt and fmt.type != "text":
            raise bad_request(
                "response_format: cannot be combined with tools; use one or the other"
            )
        try:
            grammar = calls_grammar(tools, model.engine.tokenizer)
            model.engine.check(grammar)
            return grammar
        except GrammarError as exc:
            raise bad_request(f"tools: a tool's parameters schema is not usable: {exc}") from exc
    try:
        text = response_format_grammar(fmt)
        grammar = Grammar(text) if text else None
        if grammar:
            model.engine.check(grammar)
        return grammar
    except GrammarError as exc:
        raise bad_request(f"response_format: {exc}") from exc


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


async def complete(model: LoadedModel, job: Job, body: ChatRequest, time_limit: float = 0):
    """Run every choice to its end and build the non-stream body."""
    try:
        async with asyncio.timeout(time_limit or None):
            choices = await asyncio.gather(*(_collect(g) for g in job.running))
    except TimeoutError:
        raise ChatdError(504, timed_out(time_limit), "timeout") from None
    return completion_body(model, job, body, choices)


def completion_body(model: LoadedModel, job: Job, body: ChatRequest, choices: list[Collected]):
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
                "logprobs": logprobs_body(c.logprobs) if body.logprobs else None,
                "finish_reason": finish,
            }
        )
    usage = usage_of([c.last for c in choices])
    return Envelope(model.id, model.engine.runner.name).completion(out, usage)


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
