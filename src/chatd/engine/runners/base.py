"""What the scheduler needs from a runner, and what the chat layer needs from its tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from chatd.engine.types import PromptImages


@dataclass
class BatchItem:
    """Tokens of one sequence for one forward pass, at positions start, start+1, ..."""

    slot: int
    tokens: list[int]
    start: int
    want_logits: bool  # logits for the last token, to sample from
    images: PromptImages | None = None  # the sequence's processed images, if any
    # With want_logits: logits for this many last tokens (more than 1: a draft to verify).
    n_logits: int = 1


@dataclass(frozen=True)
class KVState:
    """A slot's first `n_tokens` of KV cache, copied to host memory (Runner.save_prefix)."""

    n_tokens: int
    nbytes: int  # what the copy holds in memory
    data: Any  # the runner's own form: opaque to all but the runner that saved it


class Tokenizer(Protocol):
    n_vocab: int
    token_bytes: list[bytes]  # the bytes each token stands for (empty for control tokens)
    token_text: list[str]  # how to show a token in logprobs (control tokens by name)
    hidden: set[int]  # control tokens: never part of the text
    eog: set[int]  # tokens that end a generation
    chat_template: str | None
    bos_token: str
    eos_token: str
    grammar_tokenizer: Any  # llguidance's LLTokenizer, for constrained decoding
    specials: frozenset[str]  # the texts encode(special=True) reads as one control token

    def encode(self, text: str, special: bool = True) -> list[int]:
        """Token ids of text, no BOS added. special: the texts of `specials` in it are read as
        those tokens (a template's markup); without, as plain text (what a user typed)."""
        ...


def token_budget(max_batch_tokens: int, n_slots: int) -> int:
    """The tokens one forward takes: never fewer than the slots, so that every decoding
    sequence gets its token at each step, however small the asked budget."""
    return max(max_batch_tokens, n_slots)


class Runner(Protocol):
    name: str
    n_slots: int  # sequences held in the KV cache at once
    n_ctx: int  # tokens one sequence may hold (prompt and output)
    max_batch_tokens: int  # tokens one forward may take
    tokenizer: Tokenizer
    vision: bool  # takes images: then encode_images is there
    memory_bytes: int  # what it holds in memory: weights and KV cache

    def encode_images(self, text: str, images: list) -> tuple[list[int], PromptImages]:
        """The prompt's tokens with each image's tokens in place, and the processed images
        (opaque to all but the runner, which gets them back in BatchItem.images)."""
        ...

    def forward(self, items: list[BatchItem]) -> np.ndarray:
        """One forward over all items; logits rows (float32) for each item that wants them
        (n_logits rows each, in position order), in item order.

        The rows may live in the runner's own buffers: they are valid until the next forward."""
        ...

    def truncate(self, slot: int, keep: int) -> int:
        """Forget the slot's cached tokens from position `keep` on; returns how many it kept."""
        ...

    def save_prefix(self, slot: int, n_tokens: int) -> KVState:
        """A host-memory copy of the slot's first n_tokens of KV cache (it holds at least that
        many); the slot may drop what it holds past them."""
        ...

    def restore_prefix(self, slot: int, state: KVState) -> int:
        """Replace the slot's KV cache with a saved state (of any slot); returns how many tokens
        the slot now holds (0 if it could not: the slot is then empty)."""
        ...

    def close(self) -> None: ...
