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
the model gives without drafts (greedy: the same tokens; seeded: the same RNG draws). The
logits themselves do not move: through llama.cpp (SmolLM2, split KV cache), a row of 2, 4 or 8
tokens gave logits bit-identical to feeding them one a step, beside other rows or not, with
rejected drafts removed in between or not (measured on 40 positions each).

Where it pays: one stream of a small model spends its step on per-operation overhead and
reading weights, not arithmetic, so a few more positions in a forward may cost little; on a
small CPU each position is its own arithmetic and costs most of a step. So the cost of a
position is measured when a model loads (`measure_position_cost`), each sequence keeps a
record of how many of its draft tokens were accepted, and a row drafts only as many tokens as
maximise the expected tokens per second of the step (`Speculation.draft_size`), and only while
few rows decode.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from chatd.engine.runners.base import BatchItem, Runner
from chatd.engine.types import TokenEvent

# n-gram sizes looked up, longest first: a longer match predicts better; 1 drafts too often
# in free text for what it wins.
NGRAM_SIZES = (3, 2)
MAX_DRAFT = 8  # tokens drafted at most per step
# Drafting only while at most this many rows decode in a step: beyond, a forward is long and
# the extra positions of a rejected draft are a loss for every row.
MAX_DRAFTING_ROWS = 4
# What a sequence is believed to accept before it has drafted (a token's chance of matching),
# and how much that belief weighs in drafts: it gives way to the sequence's own record.
PRIOR_ACCEPTANCE, PRIOR_WEIGHT = 0.7, 2.0
# The record fades: at each verification, and more slowly at each step that does not draft
# (so that a sequence that stopped drafting, in free text, tries again where it copies).
FADE_VERIFIED, FADE_IDLE = 0.9, 0.97
# Drafting must promise at least this much more throughput than not drafting.
MIN_GAIN = 1.05


class Speculation:
    """The step-wide side of drafting: what one more position in a forward costs, relative to
    a one-token step (`measure_position_cost`), and how many draft tokens were fed and
    accepted since the last `take`."""

    def __init__(self, position_cost: float):
        self.position_cost = position_cost
        self.drafted = self.accepted = 0

    def take(self) -> tuple[int, int]:
        counts = self.drafted, self.accepted
        self.drafted = self.accepted = 0
        return counts

    def draft_size(self, acceptance: float, rows: int, limit: int) -> int:
        """The draft length that maximises the step's expected tokens per unit of time when one
        of `rows` decoding rows drafts and each draft token is accepted (until the first miss)
        with probability `acceptance`; 0 when none gains MIN_GAIN."""
        beta = self.position_cost
        plain = rows / (1 + beta * (rows - 1))  # tokens per unit of time without a draft
        best, best_rate, expected, p = 0, plain * MIN_GAIN, 1.0, 1.0
        for k in range(1, limit + 1):
            p *= acceptance
            expected += p
            rate = (rows - 1 + expected) / (1 + beta * (rows - 1 + k))
            if rate > best_rate:
                best, best_rate = k, rate
        return best


class Drafter:
    """One sequence's n-gram index and its record of accepted draft tokens.

    The index maps each n-gram to the position after its latest occurrence; it grows with the
    sequence (whose tokens are only ever appended), so a lookup is a dict access."""

    def __init__(self) -> None:
        self._index: dict[tuple[int, ...], int] = {}
        self._indexed = 0  # n-grams ending before this position are in the index
        self._hits = PRIOR_ACCEPTANCE * PRIOR_WEIGHT  # draft tokens accepted (faded)
        self._misses = (1 - PRIOR_ACCEPTANCE) * PRIOR_WEIGHT  # drafts cut short (faded)

    @property
    def acceptance(self) -> float:
        """The chance that a draft token is accepted, given the one before it was."""
        return self._hits / (self._hits + self._misses)

    def propose(self, tokens: list[int], limit: int) -> list[int]:
        """Up to `limit` tokens that followed the latest earlier occurrence of the longest
        matching suffix of `tokens`; [] when none matched."""
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
        """Records a verification (drafted 0: a step without a draft)."""
        fade = FADE_VERIFIED if drafted else FADE_IDLE
        self._hits = fade * self._hits + accepted
        self._misses = fade * self._misses + (accepted < drafted)
        prior = PRIOR_WEIGHT * (1 - fade)  # what fades goes back to the prior
        self._hits += PRIOR_ACCEPTANCE * prior
        self._misses += (1 - PRIOR_ACCEPTANCE) * prior

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


def measure_position_cost(runner: Runner, repeats: int = 5) -> float:
    """What one more position costs in a forward, as a share of a one-token forward: timed on
    slot 0 (free when a model is loaded; left empty again), the median of a few tries of each.

    Measured here (2 cores, SmolLM2 Q4_1 through llama.cpp, one row at position ~60, medians of
    interleaved tries, with 7-8 other processes on the cores: distrust the absolute numbers), a
    forward of 1 + k tokens against 1 token: 2 threads 1.8x (k=1), 2.4x (2), 2.9x (4), 4.5x (8);
    1 thread 2.1x, 2.6x, 4.2x, 6.6x; logits at the last position only instead of all 9: 4.1x
    instead of 4.5x. Each position is its own dequantise-and-dot work on a CPU, so a position
    costs 0.4-0.7 of a step there, and drafts pay only where most of them are right. At load,
    chatd measured 0.14 and 0.37 on the same machine: the load changes it, hence the knob."""
    tokens = [t for t in range(runner.tokenizer.n_vocab) if t not in runner.tokenizer.hidden]
    tokens = tokens[: MAX_DRAFT + 1]
    times: dict[int, list[float]] = {1: [], len(tokens): []}
    for i in range(repeats + 1):
        for n in times:
            started = time.perf_counter()
            runner.forward([BatchItem(0, tokens[:n], 0, True, n_logits=n)])
            if i:  # the first round warms up
                times[n].append(time.perf_counter() - started)
            runner.truncate(0, 0)
    one, many = (statistics.median(t) for t in times.values())
    return max(0.0, (many / one - 1) / (len(tokens) - 1))
