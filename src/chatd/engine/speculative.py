"""Speculative decoding without a second model: drafts from the sequence's own text.

Input-grounded answers (rewrite this code, extract these fields, quote this passage) repeat
long runs of their prompt. A `Drafter` finds the latest earlier occurrence of the sequence's
last n tokens in its prompt and output (prompt-lookup decoding) and proposes the tokens that
followed it. The scheduler feeds [last token, d1..dk] in the step's one forward, with logits
at every one of those positions, and `verify` emits tokens from those rows in order: each is
sampled exactly as it would be without speculation (same adjustments, same RNG draw), and
the next row is used only while the emitted token is the draft's. Sampling the target and
comparing it with a deterministic draft accepts d with probability p(d) and, on a mismatch,
draws from p without d renormalised: the speculative-sampling rule, so the output is the one
the model gives without drafts (greedy: the same tokens; seeded: the same RNG draws).

Where it pays: one stream of a small model spends its step on per-operation overhead and
reading weights, not arithmetic, so a few more positions in a forward cost little (see
MAX_DRAFTING_ROWS); with many rows decoding the forward becomes compute-bound and a rejected
draft is a loss, so drafting stops there.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from chatd.engine.types import TokenEvent

# n-gram sizes looked up, longest first: a longer match predicts better; 1 drafts too often
# in free text for what it wins.
NGRAM_SIZES = (3, 2)
MAX_DRAFT = 8  # tokens drafted at most per step
FIRST_DRAFT = 4  # a sequence's first drafts: its acceptance is not known yet
# Drafting only while at most this many rows decode in a step (measured, docs/architecture.md:
# with llama.cpp on 2 cores and SmolLM2, 8 more positions cost ~10 % at 1 row but at 8 rows
# they double the step).
MAX_DRAFTING_ROWS = 2


class Drafter:
    """One sequence's n-gram index and its draft length, adapted to what it accepts.

    The index maps each n-gram to the position after its latest occurrence; it grows with the
    sequence (whose tokens are only ever appended), so a lookup is a dict access."""

    def __init__(self) -> None:
        self._index: dict[tuple[int, ...], int] = {}
        self._indexed = 0  # n-grams ending before this position are in the index
        self.size = FIRST_DRAFT

    def propose(self, tokens: list[int], limit: int) -> list[int]:
        """Up to min(self.size, limit) tokens that followed the latest earlier occurrence of
        the longest matching suffix of `tokens`; [] when none matched."""
        limit = min(self.size, limit)
        if limit <= 0:
            return []
        self._extend(tokens)
        end = len(tokens)
        for n in NGRAM_SIZES:
            if end > n:
                after = self._index.get(tuple(tokens[end - n :]))
                if after is not None:
                    return tokens[after : after + limit]
        return []

    def update(self, drafted: int, accepted: int) -> None:
        """All accepted: draft more next time; else draft just past what was accepted."""
        if drafted:
            self.size = min(MAX_DRAFT, 2 * drafted) if accepted == drafted else accepted + 1

    def _extend(self, tokens: list[int]) -> None:
        """Indexes the n-grams followed by a token: those ending before the last position (the
        suffix itself must find an earlier occurrence)."""
        index = self._index
        for after in range(self._indexed, len(tokens)):
            for n in NGRAM_SIZES:
                if after >= n:
                    index[tuple(tokens[after - n : after])] = after
        self._indexed = len(tokens)


Advance = Callable[[np.ndarray, int], TokenEvent]


def verify(tokens: list[int], draft: list[int], rows: np.ndarray, advance: Advance):
    """Emits tokens from `rows` (logits after the last token, then after each draft token) in
    order: `advance(row, i)` samples and emits one token through every per-token stage and
    appends it to `tokens`. The next row is used only while the output so far is the draft's
    (a finished sequence stops). Returns the events and how many draft tokens were accepted:
    the KV cache holds the fed tokens up to there, and not beyond."""
    base = len(tokens)
    events = []
    for i, row in enumerate(rows):
        event = advance(row, i)
        events.append(event)
        if event.done or i == len(draft) or tokens[base:] != draft[: i + 1]:
            break
    accepted = 0
    while accepted < len(draft) and base + accepted < len(tokens):
        if tokens[base + accepted] != draft[accepted]:
            break
        accepted += 1
    return events, accepted
