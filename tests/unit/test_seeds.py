"""Every int64 (and uint64) seed is accepted and maps to the RNG deterministically."""

import numpy as np
import pytest
from pydantic import ValidationError

from chatd.engine.sampler import SamplerState
from chatd.engine.types import SamplingParams
from chatd.protocol.request import ChatRequest

MESSAGES = [{"role": "user", "content": "hi"}]


def _draws(seed):
    return SamplerState(SamplingParams(seed=seed), []).rng.random(4)


@pytest.mark.parametrize("seed", [-1, -(2**63), 0, 2**63 - 1, 2**64 - 1, 2**64 + 5])
def test_every_seed_gives_a_repeatable_rng(seed):
    np.testing.assert_array_equal(_draws(seed), _draws(seed))


def test_seeds_map_modulo_two_to_the_64():
    # Documented: -1 and 2**64 - 1 are the same seed, as are 2**64 + 5 (what choice i of a
    # request seeded near the top gets) and 5.
    np.testing.assert_array_equal(_draws(-1), _draws(2**64 - 1))
    np.testing.assert_array_equal(_draws(2**64 + 5), _draws(5))
    assert not np.array_equal(_draws(-1), _draws(-2))


@pytest.mark.parametrize("seed", [-(2**63), -1, 2**63 - 1, 2**64 - 1])
def test_the_protocol_accepts_int64_and_uint64_seeds(seed):
    assert ChatRequest(messages=MESSAGES, seed=seed).seed == seed


@pytest.mark.parametrize("seed", [-(2**63) - 1, 2**64, 10**30])
def test_the_protocol_refuses_seeds_past_64_bits(seed):
    with pytest.raises(ValidationError) as info:
        ChatRequest(messages=MESSAGES, seed=seed)
    assert "seed" in str(info.value)
