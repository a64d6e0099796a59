"""One running generation: its tokens, its place in the KV cache and its output state."""

from __future__ import annotations

from enum import Enum

from chatd.engine.constraints import Constraint, LazyConstraint
from chatd.engine.detokenizer import Detokenizer
from chatd.engine.runners.base import Tokenizer
from chatd.engine.sampler import SamplerState
from chatd.engine.speculative import Drafter
from chatd.engine.stop import StopMatcher
from chatd.engine.types import GenerationRequest


class Status(Enum):
    WAITING = "waiting"  # submitted, no slot yet
    RUNNING = "running"  # in a slot: prefilling or decoding
    FINISHED = "finished"  # its last event (a finish reason or an error) is out
    ABORTED = "aborted"  # its caller gave up: no more events


class Sequence:
    def __init__(
        self,
        request: GenerationRequest,
        tokenizer: Tokenizer,
        constraint: Constraint | LazyConstraint | None = None,
    ):
        self.request = request
        self.tokens = list(request.prompt)  # prompt, then each sampled token
        self.n_cached = 0  # how many of self.tokens the KV cache holds
        self.n_reused = 0  # prompt tokens found already cached (prefix reuse)
        self.slot: int | None = None
        self.status = Status.WAITING
        self.sampler = SamplerState(request.sampling, request.prompt)
        self.detokenizer = Detokenizer(tokenizer.token_bytes, tokenizer.hidden)
        self.stop = StopMatcher(request.stop)
        self.constraint = constraint  # the state of request.grammar, advanced token by token
        self.drafter = Drafter()  # n-gram drafts, when the scheduler speculates
        self.draft: list[int] = []  # the tokens drafted in the step under way

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def n_prompt(self) -> int:
        return len(self.request.prompt)

    @property
    def n_generated(self) -> int:
        return len(self.tokens) - self.n_prompt

    @property
    def pending(self) -> int:
        """Tokens still to feed the model before the next sample."""
        return len(self.tokens) - self.n_cached

    @property
    def reusable(self) -> int:
        """How many of the sequence's tokens a later prompt may take from the cache."""
        images = self.request.images
        return len(self.tokens) if images is None else images.reusable
