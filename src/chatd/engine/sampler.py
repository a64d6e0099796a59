"""Turn logits into next tokens: small pure functions over numpy arrays. `sample_step` takes a
whole step's rows at once (what the scheduler calls); `adjust_logits` and `choose` are one row's
path, which it falls back to where rows have nothing cheap in common.

Order: logit_bias and penalties (these shape the distribution we report in logprobs), then
temperature, top-k, top-p and min-p (these only choose). Each sequence brings its own RNG, so a
seeded request samples the same tokens whatever else shares the batch.

Every value the protocol accepts keeps the numbers finite: adjusted logits are held within
±`LOGIT_LIMIT` (a repetition_penalty of 1e-300 would otherwise divide a logit into infinity,
and infinity minus infinity is the NaN a logprob then reports), and temperature divides
logits already shifted to at most 0, so a tiny one sends the rest to -inf, never to NaN. Only
a grammar's mask (or a caller's -inf bias) makes a logit -inf, and those tokens are never
drawn nor reported.

The draw's running sum over the vocabulary (`np.cumsum`, ~160 us over a 49k vocabulary here) is
most of what a sampled token costs in Python. torch's scan adds in the same order five times
faster, but importing torch here put it in every llama.cpp process, and Ray Serve replicas
that had it stopped delivering answers (tests/cluster autoscaling test): not worth 130 us.
"""

from __future__ import annotations

import numpy as np

from chatd.engine.types import SamplingParams

# Far beyond any model's logits plus logit_bias (±100) and the penalties over a whole context,
# and small enough that a float64 logsumexp over a vocabulary of them stays finite.
LOGIT_LIMIT = 1e6

# Seeds are taken modulo 2**64 (numpy's PCG64 wants a non-negative integer): every int64 and
# uint64 seed is one, -1 the same as 2**64 - 1, and choice i's `seed + i` wraps at the top.
SEED_SPACE = 2**64

# top-p first looks for the nucleus among this many best tokens; a full sort only if it is wider.
_NUCLEUS_PROBE = 256


class SamplerState:
    """What sampling remembers about one sequence: its RNG and the tokens it has seen."""

    def __init__(self, params: SamplingParams, prompt: list[int]):
        self.params = params
        seed = params.seed % SEED_SPACE if params.seed is not None else None
        self.rng = np.random.Generator(np.random.PCG64(seed))  # None: fresh OS entropy
        self.output_counts: dict[int, int] = {}
        self.context_ids: set[int] = set(prompt)  # for repetition_penalty: prompt and output

    def accept(self, token: int) -> None:
        self.output_counts[token] = self.output_counts.get(token, 0) + 1
        self.context_ids.add(token)


def adjust_logits(
    logits: np.ndarray, state: SamplerState, allowed: np.ndarray | None = None
) -> np.ndarray:
    """logit_bias, repetition_penalty (CTRL), frequency and presence penalties (OpenAI's),
    then the grammar's mask (`allowed`, one bool per token) over all of them."""
    if not _needs_adjusting(state):
        return logits if allowed is None else np.where(allowed, logits, -np.inf)
    p = state.params
    out = logits.astype(np.float32, copy=True)
    if p.logit_bias:
        ids = np.fromiter(p.logit_bias.keys(), dtype=np.int64)
        out[ids] += np.fromiter(p.logit_bias.values(), dtype=np.float32)
    if p.repetition_penalty != 1.0 and state.context_ids:
        ids = np.fromiter(state.context_ids, dtype=np.int64)
        # float64: in float32 a penalty of 1e300 is inf, and 0 * inf is NaN.
        seen = out[ids].astype(np.float64)
        rp = p.repetition_penalty
        with np.errstate(over="ignore"):
            penalised_seen = np.where(seen > 0, seen / rp, seen * rp)
        out[ids] = np.clip(penalised_seen, -LOGIT_LIMIT, LOGIT_LIMIT)
    if state.output_counts and (p.frequency_penalty or p.presence_penalty):
        ids = np.fromiter(state.output_counts.keys(), dtype=np.int64)
        counts = np.fromiter(state.output_counts.values(), dtype=np.float32)
        out[ids] -= counts * p.frequency_penalty + p.presence_penalty
    # -inf stays: a ban (a caller's bias) is no number to report, and is never drawn.
    np.clip(out, -LOGIT_LIMIT, LOGIT_LIMIT, out=out, where=out > -np.inf)
    if allowed is not None:
        out[~allowed] = -np.inf
    return out


def choose(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """Pick a token id from adjusted logits: greedy at temperature 0, else filtered sampling."""
    if params.temperature <= 0:
        return int(np.argmax(logits))
    x = logits.astype(np.float64)
    with np.errstate(over="ignore"):  # a tiny temperature sends all but the best to -inf
        x = (x - x.max()) / params.temperature
    ids, share = _candidates(x, params)
    xs = x[ids] if ids is not None else x
    probs = np.exp(xs - xs.max())
    probs /= probs.sum()
    if params.top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        # probs are renormalised over the candidates; the nucleus is measured on what they held.
        cumulative = np.cumsum(probs[order]) * share
        n_keep = int(np.searchsorted(cumulative, params.top_p - 1e-9)) + 1
        probs[order[n_keep:]] = 0.0
    if params.min_p > 0.0:
        probs[probs < params.min_p * probs.max()] = 0.0
    cumulative = np.cumsum(probs)
    pick = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    pick = min(pick, len(probs) - 1)
    return int(ids[pick]) if ids is not None else pick


def sample_step(
    logits: np.ndarray, states: list[SamplerState], masks: list[np.ndarray | None]
) -> tuple[list[int], list[np.ndarray | None]]:
    """The next token of every row, each drawn exactly as `choose(adjust_logits(...))` would
    draw it with the row's own RNG, and the adjusted row of each row that asked for logprobs.

    Rows with nothing to adjust share the work: greedy ones one argmax over the step's array,
    plain temperature ones (min-p allowed) one float64 pass. top-k and top-p rows go one by one:
    their cost is numpy's partition and sort, not Python's, so batching them would gain nothing."""
    touched = [m is not None or _needs_adjusting(s) for s, m in zip(states, masks, strict=True)]
    rows = [
        adjust_logits(row, states[i], masks[i]) if touched[i] else row
        for i, row in enumerate(logits)
    ]
    tokens = [0] * len(rows)
    kinds = [_kind(s.params) for s in states]
    greedy = [i for i, kind in enumerate(kinds) if kind == "greedy" and not touched[i]]
    warm = [i for i, kind in enumerate(kinds) if kind == "temperature"]
    shared = logits if len(greedy) == len(rows) else logits[greedy]  # all greedy: no copy
    picks = np.argmax(shared, axis=1).tolist()
    picks += _draw_at_temperature([rows[i] for i in warm], [states[i] for i in warm])
    for i, token in zip(greedy + warm, picks, strict=True):
        tokens[i] = token
    drawn = set(greedy + warm)
    for i in (i for i in range(len(rows)) if i not in drawn):  # filtered, or greedy and adjusted
        tokens[i] = choose(rows[i], states[i].params, states[i].rng)
    adjusted = [row if s.params.logprobs else None for row, s in zip(rows, states, strict=True)]
    return tokens, adjusted


def _needs_adjusting(state: SamplerState) -> bool:
    """Whether `adjust_logits` would change a row (a grammar's mask aside)."""
    p = state.params
    penalised = (p.frequency_penalty or p.presence_penalty) and state.output_counts
    return bool(p.logit_bias or p.repetition_penalty != 1.0 or penalised)


def _kind(params: SamplingParams) -> str:
    """How `sample_step` draws a row: greedy and temperature rows together, filtered ones alone."""
    if params.temperature <= 0:
        return "greedy"
    return "temperature" if params.top_p >= 1.0 and params.top_k <= 0 else "filtered"


def _draw_at_temperature(rows: list[np.ndarray], states: list[SamplerState]) -> list[int]:
    """`choose` for rows at a temperature with at most min-p, as one array: the same float64
    operations in the same order along each row, so the same draws."""
    if not rows:
        return []
    x = np.empty((len(rows), len(rows[0])))
    for j, row in enumerate(rows):
        x[j] = row  # float32 to float64, as astype does
    temperature = np.array([[s.params.temperature] for s in states])
    with np.errstate(over="ignore"):
        x -= x.max(axis=1, keepdims=True)
        x /= temperature
    x -= x.max(axis=1, keepdims=True)
    probs = np.exp(x, out=x)
    probs /= probs.sum(axis=1, keepdims=True)
    min_p = np.array([[s.params.min_p] for s in states])
    if min_p.any():
        probs[probs < min_p * probs.max(axis=1, keepdims=True)] = 0.0
    last = probs.shape[1] - 1
    picks = []
    for p, state in zip(probs, states, strict=True):
        c = np.cumsum(p)
        picks.append(min(int(np.searchsorted(c, state.rng.random() * c[-1], side="right")), last))
    return picks


def _candidates(x: np.ndarray, params: SamplingParams) -> tuple[np.ndarray | None, float]:
    """The token ids worth sorting (None for all of them) and the share of the distribution
    that top-p measures them against: top-k renormalises (as transformers does), the probe not."""
    vocab = len(x)
    if 0 < params.top_k < vocab:
        return np.argpartition(x, -params.top_k)[-params.top_k :], 1.0
    if params.top_p < 1.0 and vocab > _NUCLEUS_PROBE:
        probe = np.argpartition(x, -_NUCLEUS_PROBE)[-_NUCLEUS_PROBE:]
        m = x.max()
        share = float(np.exp(x[probe] - m).sum() / np.exp(x - m).sum())
        if share >= params.top_p:
            return probe, share  # the nucleus lies inside the probe: sorting it is exact
    return None, 1.0


def log_softmax_at(logits: np.ndarray, token: int, k: int) -> tuple[float, list[tuple[int, float]]]:
    """The log-probability of `token` and the k most likely (id, logprob) pairs."""
    x = logits.astype(np.float64)
    m = x.max()
    lse = m + np.log(np.exp(x - m).sum())
    top: list[tuple[int, float]] = []
    if k > 0:
        best = np.argpartition(x, -k)[-k:]
        best = best[np.argsort(-x[best], kind="stable")]
        # Tokens a grammar forbids have no probability to report.
        top = [(int(i), float(x[i] - lse)) for i in best if np.isfinite(x[i])]
    return float(x[token] - lse), top
