"""The boundary between the HTTP layer and the engine: plain dataclasses, no tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatd.engine.constraints import Constraint, LazyConstraint


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


@dataclass
class GenerationRequest:
    """One sequence to generate: the engine never sees messages or HTTP."""

    id: str
    prompt: list[int]
    sampling: SamplingParams
    max_tokens: int
    stop: tuple[str, ...] = ()
    constraint: Constraint | LazyConstraint | None = None  # a grammar the output must follow
    # The runner's processed images (runner.encode_images), if any; `.reusable` is how many
    # prompt tokens precede the first image (a cached prefix may cover only those).
    images: Any = None


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
