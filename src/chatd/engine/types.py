"""The boundary between the chat layer and the engine: data that says what to generate, and
the events that come back. No live state: matchers and sampler state live in the Sequence."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means off
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass(frozen=True)
class Grammar:
    """A grammar the output must follow, in llguidance's form. With triggers it is lazy: it
    takes hold only once the output starts with one of them (a tool call in an answer that
    may also be plain text)."""

    text: str
    triggers: tuple[str, ...] = ()


@dataclass(eq=False, kw_only=True)
class PromptImages:
    """A prompt's images as a runner processed them (`Runner.encode_images`). The scheduler
    reads only `reusable`; each runner subclasses this with what its forward needs."""

    reusable: int  # prompt tokens before the first image: a cached prefix may cover these


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate: the engine never sees messages or HTTP."""

    id: str
    prompt: list[int]
    sampling: SamplingParams
    max_tokens: int
    stop: tuple[str, ...] = ()
    grammar: Grammar | None = None
    images: PromptImages | None = None


@dataclass(frozen=True)
class Load:
    """What a model's engine is busy with: sequences decoding, and those that will have to
    wait for a slot (submitted ones that a free slot takes at once do not wait)."""

    running: int
    waiting: int


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: list[int]


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int]
    top: list[TopLogprob]


@dataclass
class TokenEvent:
    """What one scheduler step produced for one sequence.

    `text` is safe to show: complete UTF-8 characters with any possible stop string held back.
    The last event of a sequence carries `finish_reason` (or `error`) and the token counts.
    """

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length"
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.error is not None
