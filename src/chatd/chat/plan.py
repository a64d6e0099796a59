"""A parsed request becomes the whole generation plan in one pass, read top to bottom: the
tool plan, the prompt (with its images), the grammar, the sampling, and one GenerationRequest
per choice. Everything that needs the model is checked here; every refusal is a RequestError."""

from __future__ import annotations

import asyncio
import functools
import uuid
from dataclasses import dataclass, replace

from chatd.chat.errors import RequestError
from chatd.chat.prompt import build_prompt
from chatd.chat.structured import response_format_grammar
from chatd.chat.template import ChatTemplate
from chatd.chat.tools import ToolPlan, calls_grammar, plan_tools
from chatd.config import ImageLimits
from chatd.engine.constraints import GrammarError
from chatd.engine.engine import Engine
from chatd.engine.runners.base import Tokenizer
from chatd.engine.types import GenerationRequest, Grammar, SamplingParams
from chatd.protocol.request import ChatRequest


@dataclass(frozen=True)
class Plan:
    """What to generate (a request per choice) and how to read the output (the tool plan)."""

    requests: list[GenerationRequest]
    tools: ToolPlan | None


async def plan(
    body: ChatRequest,
    template: ChatTemplate,
    engine: Engine,
    images: ImageLimits,
    max_n: int,
) -> Plan:
    n = body.n or 1
    if n > max_n:
        raise RequestError(f"n: at most {max_n} choices per request, got {n}")
    _refuse_surely_too_long(body, engine)
    tools = plan_tools(body, template.source)
    prompt = await build_prompt(body.messages, template, engine.runner, tools, images)
    room = engine.runner.n_ctx - len(prompt.tokens)
    if room < 1:
        n_ctx = engine.runner.n_ctx
        raise RequestError(
            f"the prompt is {len(prompt.tokens)} tokens long, but this model's context holds "
            f"{n_ctx} tokens for prompt and answer together: at most {n_ctx - 1} prompt "
            "tokens fit"
        )
    # The answer may use what the context leaves; a larger max_tokens ends with "length" there.
    max_tokens = min(body.output_limit or room, room)
    # Compiling and checking a grammar takes milliseconds, a pathological one seconds.
    grammar = await asyncio.to_thread(_grammar, body, tools, engine, max_tokens)
    sampling = _sampling(body, engine.tokenizer.n_vocab)
    rid = uuid.uuid4().hex
    requests = [
        GenerationRequest(
            id=f"{rid}-{i}",
            prompt=prompt.tokens,
            # Seeded choices differ from each other yet repeat from one request to the next;
            # the engine takes seeds modulo 2**64, so seed + i wraps past the top.
            sampling=sampling if body.seed is None else replace(sampling, seed=body.seed + i),
            max_tokens=max_tokens,
            stop=tuple(body.stop),
            grammar=grammar,
            images=prompt.images,
        )
        for i in range(n)
    ]
    return Plan(requests, tools)


def _refuse_surely_too_long(body: ChatRequest, engine: Engine) -> None:
    """Text that cannot fit however it is tokenised (no token spells more than the longest
    one's bytes) is refused before any tokenising: a 50 MB message costs no tokeniser time."""
    n_bytes = sum(len(text.encode()) for m in body.messages for text in _texts(m.content))
    n_ctx = engine.runner.n_ctx
    if n_bytes > _longest_token(engine.tokenizer) * n_ctx:
        raise RequestError(
            f"messages: {n_bytes} bytes of text is more than this model's context of {n_ctx} "
            "tokens can hold"
        )


def _texts(content) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [part.text for part in content or () if part.type == "text"]


@functools.lru_cache(maxsize=16)
def _longest_token(tokenizer: Tokenizer) -> int:
    return max(map(len, tokenizer.token_bytes), default=1) or 1


def _grammar(
    body: ChatRequest, tools: ToolPlan | None, engine: Engine, max_tokens: int
) -> Grammar | None:
    """Tools or response_format as a grammar, compiled now so that a bad one is a 400, as is
    one whose shortest answer does not fit in max_tokens (a cut answer is invalid)."""
    fmt = body.response_format
    if tools and fmt and fmt.type != "text":
        raise RequestError("response_format: cannot be combined with tools; use one or the other")
    where = "tools: a tool's parameters schema is not usable" if tools else "response_format"
    try:
        if tools:
            grammar = calls_grammar(tools, engine.tokenizer)
        else:
            text = response_format_grammar(fmt)
            grammar = Grammar(text) if text else None
        if grammar:
            engine.check(grammar, max_tokens)
    except GrammarError as exc:
        raise RequestError(f"{where}: {exc}") from exc
    return grammar


def _sampling(body: ChatRequest, n_vocab: int) -> SamplingParams:
    try:
        bias = body.bias_map(n_vocab)
    except ValueError as exc:
        raise RequestError(str(exc)) from exc
    return SamplingParams(
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
