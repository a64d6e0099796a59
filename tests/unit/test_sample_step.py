"""sample_step, the whole step at once, draws exactly what the per-row path draws: same tokens
for the same seeds, the same adjusted rows for logprobs, whatever mix of rows shares the step."""

import numpy as np
import pytest

from chatd.engine.sampler import SamplerState, adjust_logits, choose, sample_step
from chatd.engine.types import SamplingParams

VOCAB = 3000


def _random_params(rng: np.random.Generator, seed: int) -> SamplingParams:
    kind = rng.integers(6)
    return SamplingParams(
        temperature=0.0 if kind == 0 else float(rng.choice([0.3, 0.8, 1.0, 1.7])),
        top_p=float(rng.choice([1.0, 0.9, 0.5])) if kind == 2 else 1.0,
        top_k=int(rng.choice([1, 5, 40])) if kind == 3 else 0,
        min_p=float(rng.choice([0.0, 0.05, 0.3])) if kind in (1, 4) else 0.0,
        frequency_penalty=0.5 if kind == 5 else 0.0,
        presence_penalty=0.3 if kind == 5 else 0.0,
        repetition_penalty=1.3 if rng.random() < 0.15 else 1.0,
        logit_bias={int(rng.integers(VOCAB)): 5.0} if rng.random() < 0.15 else {},
        seed=seed,
        logprobs=bool(rng.random() < 0.3),
    )


def _states(params: list[SamplingParams], prompt: list[int]) -> list[SamplerState]:
    states = [SamplerState(p, prompt) for p in params]
    for state in states:
        for token in (3, 3, 17):
            state.accept(token)
    return states


def _logits(rng: np.random.Generator, rows: int) -> np.ndarray:
    # Peaked like a model's (a few likely tokens over a long tail), float32 like a runner's.
    x = rng.standard_normal((rows, VOCAB)) * 2.0
    x[:, rng.integers(VOCAB, size=4)] += 9.0
    return x.astype(np.float32)


def _masks(rng: np.random.Generator, rows: int) -> list[np.ndarray | None]:
    return [rng.random(VOCAB) < 0.2 if rng.random() < 0.2 else None for _ in range(rows)]


@pytest.mark.parametrize("trial", range(40))
def test_sample_step_equals_the_per_row_path(trial):
    rng = np.random.default_rng(trial)
    n_rows = int(rng.integers(1, 12))
    params = [_random_params(rng, seed=1000 * trial + i) for i in range(n_rows)]
    prompt = rng.integers(VOCAB, size=20).tolist()
    stepped, by_row = _states(params, prompt), _states(params, prompt)
    for _ in range(3):  # several steps: each RNG advances the same way on both paths
        logits, masks = _logits(rng, n_rows), _masks(rng, n_rows)
        tokens, adjusted = sample_step(logits, stepped, masks)
        for i, (state, mask) in enumerate(zip(by_row, masks, strict=True)):
            row = adjust_logits(logits[i], state, mask)
            assert tokens[i] == choose(row, state.params, state.rng), (trial, i, params[i])
            if state.params.logprobs:
                np.testing.assert_array_equal(adjusted[i], row)
            else:
                assert adjusted[i] is None
            if mask is not None:
                assert mask[tokens[i]]
        for a, b, token in zip(stepped, by_row, tokens, strict=True):
            a.accept(token)
            b.accept(token)


def test_an_all_greedy_step_is_the_argmax_of_every_row():
    rng = np.random.default_rng(5)
    logits = _logits(rng, 6)
    states = _states([SamplingParams(temperature=0)] * 6, [])
    tokens, adjusted = sample_step(logits, states, [None] * 6)
    assert tokens == np.argmax(logits, axis=1).tolist()
    assert adjusted == [None] * 6


def test_a_row_asking_for_logprobs_gets_its_adjusted_logits():
    logits = np.zeros((2, 8), dtype=np.float32)
    params = SamplingParams(temperature=0, logit_bias={5: 3.0}, logprobs=True)
    states = _states([params, SamplingParams(temperature=0, logprobs=True)], [])
    tokens, adjusted = sample_step(logits, states, [None, np.arange(8) == 2])
    assert tokens == [5, 2]
    assert adjusted[0][5] == 3.0 and adjusted[0][4] == 0.0
    assert np.isneginf(adjusted[1][[0, 1, 3]]).all() and adjusted[1][2] == 0.0


def test_an_empty_step_draws_nothing():
    assert sample_step(np.zeros((0, 8), dtype=np.float32), [], []) == ([], [])


# Drawn by the per-row sampler before sample_step existed (commit d50c2d0): a seeded request
# must keep drawing these tokens.
BEFORE = {  # the ids, space-separated
    "temperature": "4878 2694 3712 2435 1776 377 103 1513 4915 1476 3904 2309 "
    "3964 3968 3274 3272 3621 2746 660 4262 483 2746 3727 2794",
    "top_p": "4991 3354 3357 4030 3704 4287 1745 1022 4915 611 1006 1067 "
    "40 3616 2390 3735 3621 2746 3814 4589 2583 2746 3727 2543",
    "top_k": "360 3007 1221 367 2390 1331 4811 4915 4915 3315 2892 4510 "
    "40 551 1252 3289 583 103 2216 568 601 2746 2426 3577",
    "min_p": "3919 3354 3357 3439 1776 377 103 1513 4915 1476 4600 2071 "
    "2831 3790 3024 1591 583 2746 660 4091 483 2746 3727 2794",
    "penalties": "4878 2694 3712 2435 1776 377 103 1513 4915 1476 3717 2309 "
    "3964 3910 3238 3735 3621 2746 660 4287 483 1727 3727 2794",
}
CASES = {
    "temperature": {"temperature": 0.8},
    "top_p": {"temperature": 0.8, "top_p": 0.9},
    "top_k": {"temperature": 1.0, "top_k": 40},
    "min_p": {"temperature": 0.7, "min_p": 0.05},
    "penalties": {"temperature": 0.8, "frequency_penalty": 0.5, "repetition_penalty": 1.2},
}


@pytest.mark.parametrize("case", CASES)
def test_a_seeded_request_draws_the_tokens_it_drew_before(case):
    rng = np.random.default_rng(2026)
    logits = (rng.standard_normal((24, 5000)) * 3).astype(np.float32)
    logits[:, rng.integers(5000, size=8)] += 6
    state = SamplerState(SamplingParams(seed=1234, **CASES[case]), [1, 2, 3])
    drawn = []
    for row in logits:
        [token], _ = sample_step(row[None], [state], [None])
        state.accept(token)
        drawn.append(token)
    assert drawn == [int(t) for t in BEFORE[case].split()]
