"""A tiny deterministic model for the engine's unit tests, behind the Runner protocol.

Its vocabulary is the 256 bytes and an end token. It keeps each slot's tokens as its "KV cache"
(a forward that leaves a gap, or a truncate past what the slot holds, is a scheduler bug and
fails loudly) and favours the byte after the last cached one, and the end token after a '.':
"abc" goes on "def...", "," goes on "-." and ends. Given another `rule` (the favoured token
after a context), it follows that instead.
"""

from __future__ import annotations

from collections.abc import Callable

import llguidance
import numpy as np

from chatd.engine.runners.base import BatchItem, KVState

EOS = 256
FAVOURED = 10.0  # the logit of the favoured token; every other token has 0
STATE_BYTES = 100  # what a saved prefix "holds" per token


class _LLVocab:
    """What llguidance.TokenizerWrapper reads to build its view of the vocabulary."""

    eos_token_id = EOS
    bos_token_id = None
    tokens = [bytes([i]) for i in range(256)] + [b"</s>"]
    special_token_ids = [EOS]

    def __call__(self, data: bytes) -> list[int]:
        return list(data)


class ByteTokenizer:
    n_vocab = 257
    token_bytes = [bytes([i]) for i in range(256)] + [b""]
    token_text = [chr(i) for i in range(256)] + ["</s>"]
    hidden = {EOS}
    eog = {EOS}
    chat_template = None
    bos_token, eos_token = "", "</s>"
    grammar_tokenizer = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_LLVocab()))
    specials: frozenset[str] = frozenset()  # no text reads as its end token

    def encode(self, text: str, special: bool = True) -> list[int]:
        return list(text.encode())


TOKENIZER = ByteTokenizer()


def text_of(tokens: list[int]) -> str:
    return "".join(TOKENIZER.token_text[t] for t in tokens)


def favoured(tokens: list[int]) -> int:
    last = tokens[-1]
    return EOS if last == ord(".") else (last + 1) % 256


class FakeRunner:
    name = "fake"
    vision = False
    memory_bytes = 0
    tokenizer = TOKENIZER

    def __init__(
        self,
        n_slots: int = 2,
        n_ctx: int = 64,
        max_batch_tokens: int = 16,
        rule: Callable[[list[int]], int] = favoured,
    ):
        self.n_slots, self.n_ctx, self.max_batch_tokens = n_slots, n_ctx, max_batch_tokens
        self.rule = rule
        self.cache: list[list[int]] = [[] for _ in range(n_slots)]
        # Each forward's items as (slot, start, text, want_logits), to assert on exactly.
        self.calls: list[list[tuple[int, int, str, bool]]] = []
        self.truncations: list[tuple[int, int]] = []
        self.restores: list[tuple[int, int]] = []  # (slot, tokens) of each restore_prefix
        self.fail_on: set[int] = set()  # the forwards (1 for the first) that raise
        self.closed = False

    def forward(self, items: list[BatchItem]) -> np.ndarray:
        self.calls.append([(i.slot, i.start, text_of(i.tokens), i.want_logits) for i in items])
        if len(self.calls) in self.fail_on:
            raise RuntimeError("the device fell over")
        rows = []
        for item in items:
            cache = self.cache[item.slot]
            assert item.start <= len(cache), f"slot {item.slot}: a gap before {item.start}"
            cache[item.start :] = item.tokens
            if item.want_logits:  # a row after each of the last n_logits tokens
                for end in range(len(cache) - item.n_logits + 1, len(cache) + 1):
                    row = np.zeros(TOKENIZER.n_vocab, np.float32)
                    row[self.rule(cache[:end])] = FAVOURED
                    rows.append(row)
        return np.array(rows, np.float32).reshape(len(rows), TOKENIZER.n_vocab)

    def truncate(self, slot: int, keep: int) -> int:
        assert keep <= len(self.cache[slot]), f"slot {slot} holds fewer than {keep} tokens"
        self.truncations.append((slot, keep))
        del self.cache[slot][keep:]
        return keep

    def save_prefix(self, slot: int, n_tokens: int) -> KVState:
        cache = self.cache[slot]
        assert n_tokens <= len(cache), f"slot {slot} holds fewer than {n_tokens} tokens"
        del cache[n_tokens:]
        return KVState(n_tokens, n_tokens * STATE_BYTES, list(cache))

    def restore_prefix(self, slot: int, state: KVState) -> int:
        self.restores.append((slot, state.n_tokens))
        self.cache[slot] = list(state.data)
        return state.n_tokens

    def close(self) -> None:
        self.closed = True
