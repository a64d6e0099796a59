"""One running generation: its tokens, its place in the KV cache and its output state."""

from __future__ import annotations

from chatd.engine.constraints import Constraint, LazyConstraint
from chatd.engine.detokenizer import Detokenizer
from chatd.engine.runners.base import Tokenizer
from chatd.engine.sampler import SamplerState
from chatd.engine.stop import StopMatcher
from chatd.engine.types import GenerationRequest


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
        self.cancelled = False
        self.sampler = SamplerState(request.sampling, request.prompt)
        self.detokenizer = Detokenizer(tokenizer.token_bytes, tokenizer.hidden)
        self.stop = StopMatcher(request.stop)
        self.constraint = constraint  # the state of request.grammar, advanced token by token

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
