from collections import Counter

import numpy as np
import pytest

from chatd.engine import sampler
from chatd.engine.sampler import SamplerState, adjust_logits, choose, log_softmax_at
from chatd.engine.types import SamplingParams


def _state(prompt=(), accepted=(), **params):
    state = SamplerState(SamplingParams(**params), list(prompt))
    for token in accepted:
        state.accept(token)
    return state


def _draws(logits, params, n, seed=0):
    rng = np.random.Generator(np.random.PCG64(seed))
    return Counter(choose(logits, params, rng) for _ in range(n))


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


class _Sweep:
    """An rng whose draws are evenly spaced over [0, 1): every token with mass >= 1/n is hit."""

    def __init__(self, n):
        self._u = iter(np.arange(n) / n)

    def random(self):
        return float(next(self._u))


def _allowed(logits, params, n=1000):
    rng = _Sweep(n)
    return {choose(logits, params, rng) for _ in range(n)}


def _full_sort_nucleus(logits, top_p):
    probs = _softmax(logits.astype(np.float64))
    order = np.argsort(-probs, kind="stable")
    n_keep = int(np.searchsorted(np.cumsum(probs[order]), top_p - 1e-9)) + 1
    return {int(i) for i in order[:n_keep]}


def test_adjust_logits_without_adjustments_returns_the_same_array():
    logits = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    assert adjust_logits(logits, _state(prompt=[0, 1])) is logits
    np.testing.assert_array_equal(logits, [0.5, -1.0, 2.0])


def test_penalties_without_output_tokens_leave_logits_unchanged():
    logits = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    out = adjust_logits(logits, _state(prompt=[2], frequency_penalty=1.0, presence_penalty=1.0))
    np.testing.assert_array_equal(out, [0.5, -1.0, 2.0])


def test_logit_bias_adds_to_the_given_ids_only():
    logits = np.array([1.0, 2.0, 3.0, 4.0, 5.0], dtype=np.float32)
    out = adjust_logits(logits, _state(logit_bias={1: 2.5, 3: -100.0}))
    np.testing.assert_allclose(out, [1.0, 4.5, 3.0, -96.0, 5.0])
    np.testing.assert_array_equal(logits, [1.0, 2.0, 3.0, 4.0, 5.0])


def test_frequency_and_presence_penalties_follow_openai_definition():
    logits = np.array([1.0, 2.0, 3.0, 0.5], dtype=np.float32)
    state = _state(accepted=[1, 2, 1], frequency_penalty=0.5, presence_penalty=0.25)
    out = adjust_logits(logits, state)
    np.testing.assert_allclose(out, [1.0, 2.0 - (2 * 0.5 + 0.25), 3.0 - (0.5 + 0.25), 0.5])


def test_presence_penalty_does_not_grow_with_count():
    logits = np.array([1.0, 1.0], dtype=np.float32)
    out = adjust_logits(logits, _state(accepted=[0, 0, 0, 1], presence_penalty=1.5))
    np.testing.assert_allclose(out, [-0.5, -0.5])


def test_negative_frequency_penalty_raises_repeated_tokens():
    logits = np.array([0.0, 0.0, 0.0], dtype=np.float32)
    out = adjust_logits(logits, _state(accepted=[2, 2, 2], frequency_penalty=-1.0))
    np.testing.assert_allclose(out, [0.0, 0.0, 3.0])


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
    logits = np.array([2.0, -1.0, 3.0, 4.0, -2.0], dtype=np.float32)
    out = adjust_logits(logits, _state(prompt=[0, 1], accepted=[2], repetition_penalty=2.0))
    np.testing.assert_allclose(out, [1.0, -2.0, 1.5, 4.0, -2.0])


def test_choose_at_temperature_zero_is_argmax():
    logits = np.array([0.1, 3.0, 2.9, -5.0])
    rng = np.random.Generator(np.random.PCG64(0))
    assert all(choose(logits, SamplingParams(temperature=0.0), rng) == 1 for _ in range(50))


def test_top_k_one_always_picks_argmax_even_at_high_temperature():
    logits = np.array([1.0, 1.2, 0.9, 1.1, 1.15])
    assert _draws(logits, SamplingParams(temperature=2.0, top_k=1), 500) == Counter({1: 500})


def test_top_k_two_never_samples_outside_the_two_best():
    logits = np.array([1.0, 1.2, 0.9, 1.1, 1.15])
    drawn = _draws(logits, SamplingParams(temperature=2.0, top_k=2), 3000)
    assert set(drawn) == {1, 4}


def test_top_p_keeps_smallest_set_reaching_mass():
    probs = np.array([0.15, 0.3, 0.5, 0.05])
    logits = np.log(probs)
    assert set(_draws(logits, SamplingParams(top_p=0.8), 3000)) == {2, 1}
    assert set(_draws(logits, SamplingParams(top_p=0.81), 3000)) == {2, 1, 0}


def test_top_p_renormalizes_within_the_kept_set():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    drawn = _draws(logits, SamplingParams(top_p=0.8), 10000)
    assert drawn[0] / 10000 == pytest.approx(0.5 / 0.8, abs=0.02)


def test_min_p_excludes_tokens_below_fraction_of_max_prob():
    logits = np.log(np.array([0.19, 0.4, 0.16, 0.25]))
    assert set(_draws(logits, SamplingParams(min_p=0.5), 3000)) == {1, 3}


@pytest.mark.parametrize(
    "params",
    [SamplingParams(top_p=0.8), SamplingParams(min_p=0.5), SamplingParams(top_k=2)],
    ids=["top_p", "min_p", "top_k"],
)
def test_draw_of_exactly_zero_never_picks_a_filtered_token(params):
    logits = np.log(np.array([0.05, 0.15, 0.3, 0.5]))
    assert choose(logits, params, _Sweep(1)) in {2, 3}


def test_same_seed_gives_same_sequence_of_draws():
    logits = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    params = SamplingParams(seed=1234)
    a, b, c = (SamplerState(params, []) for _ in range(3))
    c.rng = np.random.Generator(np.random.PCG64(4321))
    seq_a = [choose(logits, params, a.rng) for _ in range(64)]
    seq_b = [choose(logits, params, b.rng) for _ in range(64)]
    seq_c = [choose(logits, params, c.rng) for _ in range(64)]
    assert seq_a == seq_b
    assert seq_a != seq_c


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_empirical_frequencies_match_softmax(temperature):
    logits = np.array([1.0, 0.0, -1.0, 2.0])
    n = 20000
    drawn = _draws(logits, SamplingParams(temperature=temperature), n, seed=7)
    freqs = np.array([drawn[i] for i in range(4)]) / n
    np.testing.assert_allclose(freqs, _softmax(logits / temperature), atol=0.012)


def _probe_holds_nucleus_logits():
    probs = np.full(1000, 0.00025)
    probs[0], probs[1], probs[2] = 0.3, 0.15, 0.1
    probs[3:256] = 0.001
    return np.log(probs)


def test_nucleus_probe_gives_same_allowed_set_as_full_sort_when_probe_holds_nucleus():
    logits = _probe_holds_nucleus_logits()
    # What makes this the probe's case: the top 256 tokens hold the nucleus, not everything.
    assert 0.5 <= np.sort(_softmax(logits))[-256:].sum() < 0.9
    assert _allowed(logits, SamplingParams(top_p=0.5)) == {0, 1, 2}


def test_full_sort_path_keeps_nucleus_when_probe_is_disabled(monkeypatch):
    monkeypatch.setattr(sampler, "_NUCLEUS_PROBE", 10**9)
    logits = _probe_holds_nucleus_logits()
    assert _allowed(logits, SamplingParams(top_p=0.5)) == {0, 1, 2}


def test_nucleus_probe_falls_back_to_full_sort_on_flat_distribution():
    logits = -0.001 * np.arange(1000, dtype=np.float64)
    logits = logits[np.random.default_rng(3).permutation(1000)]
    expected = _full_sort_nucleus(logits, 0.5)
    assert len(expected) > 256
    assert _allowed(logits, SamplingParams(top_p=0.5), n=2500) == expected


def _sampled(state: SamplerState, n: int = 32) -> list[int]:
    """n tokens the state's own RNG picks from a flat distribution (every token equally likely)."""
    logits = np.zeros(1000, dtype=np.float32)
    return [choose(logits, state.params, state.rng) for _ in range(n)]


def test_a_seed_gives_the_same_tokens_whatever_the_prompt():
    a = SamplerState(SamplingParams(seed=99), [1, 2])
    b = SamplerState(SamplingParams(seed=99), [3])
    assert _sampled(a) == _sampled(b)
    assert _sampled(SamplerState(SamplingParams(seed=100), [])) != _sampled(
        SamplerState(SamplingParams(seed=99), [])
    )


def test_unseeded_states_sample_different_tokens():
    a = SamplerState(SamplingParams(), [])
    b = SamplerState(SamplingParams(), [])
    assert _sampled(a) != _sampled(b)


def test_accept_counts_output_tokens_and_extends_context():
    state = _state(prompt=[5, 6], accepted=[7, 7, 5])
    assert state.output_counts == {7: 2, 5: 1}
    assert state.context_ids == {5, 6, 7}


def test_log_softmax_at_matches_float64_reference():
    logits = np.random.default_rng(11).normal(0, 3, size=50).astype(np.float32)
    x = logits.astype(np.float64)
    reference = x - np.log(np.exp(x).sum())
    logprob, top = log_softmax_at(logits, 17, 5)
    assert logprob == pytest.approx(reference[17], abs=1e-9)
    expected_ids = [int(i) for i in np.argsort(-reference)[:5]]
    assert [i for i, _ in top] == expected_ids
    assert [lp for _, lp in top] == pytest.approx([reference[i] for i in expected_ids], abs=1e-9)
    assert all(a[1] >= b[1] for a, b in zip(top, top[1:], strict=False))


def test_log_softmax_at_without_top_k_returns_empty_list():
    logprob, top = log_softmax_at(np.array([0.0, 0.0]), 0, 0)
    assert logprob == pytest.approx(np.log(0.5))
    assert top == []


def test_log_softmax_at_is_stable_for_huge_logits():
    logprob, top = log_softmax_at(np.array([1000.0, 999.0, -1000.0]), 1, 2)
    assert logprob == pytest.approx(-1.0 - np.log1p(np.exp(-1.0)))
    assert [i for i, _ in top] == [0, 1]


# -- every accepted parameter value keeps logits, draws and logprobs finite ---------------------

_EXTREMES = [
    {"repetition_penalty": 1e-300},
    {"repetition_penalty": 1e-45},
    {"repetition_penalty": 1e300},
    {"frequency_penalty": 2.0, "presence_penalty": 2.0},
    {"frequency_penalty": -2.0, "presence_penalty": -2.0},
    {"logit_bias": {0: 100.0, 1: -100.0, 2: 100.0}},
    {"temperature": 1e-300},
    {"temperature": 5e-324, "top_p": 1e-300},
    {"temperature": 2.0, "top_p": 1e-300, "min_p": 1.0},
    {"temperature": 1e-300, "repetition_penalty": 1e-300, "top_k": 2},
    {"temperature": 1e-300, "repetition_penalty": 1e300, "min_p": 1e-300},
]


@pytest.mark.parametrize("params", _EXTREMES, ids=[str(p) for p in _EXTREMES])
def test_extreme_parameters_keep_logits_draws_and_logprobs_finite(params):
    logits = np.array([3.0, 0.0, -2.0, 1e-3, 5.0, 0.0, -40.0], dtype=np.float32)
    state = _state(prompt=[0, 1, 2, 5], accepted=[0, 0, 1, 2, 5], **params)
    allowed = np.array([True, True, True, True, True, True, False])
    for mask in (None, allowed):
        out = adjust_logits(logits, state, mask)
        allowed_out = out if mask is None else out[mask]
        assert np.isfinite(allowed_out).all(), out
        for seed in range(20):
            rng = np.random.Generator(np.random.PCG64(seed))
            token = choose(out, state.params, rng)
            assert mask is None or mask[token]
            logprob, top = log_softmax_at(out, token, 5)
            assert np.isfinite(logprob) and logprob <= 0.0
            assert top and all(np.isfinite(v) and v <= 0.0 for _, v in top)


def test_tiny_repetition_penalty_still_favours_the_seen_tokens():
    logits = np.array([1.0, 2.0, -1.0, 0.0], dtype=np.float32)
    out = adjust_logits(logits, _state(prompt=[0], repetition_penalty=1e-300))
    assert int(np.argmax(out)) == 0
    assert out[2] == pytest.approx(-1.0) and out[3] == 0.0


def test_huge_repetition_penalty_leaves_seen_tokens_possible_but_last():
    logits = np.array([1.0, 2.0, -1.0, 0.5], dtype=np.float32)
    out = adjust_logits(logits, _state(prompt=[1, 2], repetition_penalty=1e300))
    assert np.isfinite(out).all()
    assert out[2] < out[1] < out[3] < out[0]


def test_near_zero_temperature_picks_the_best_token():
    logits = np.array([0.5, 2.0, 1.999, -3.0], dtype=np.float32)
    rng = np.random.Generator(np.random.PCG64(0))
    for temperature in (1e-300, 5e-324):
        params = SamplingParams(temperature=temperature)
        assert {choose(logits, params, rng) for _ in range(50)} == {1}
