"""The response cache never keeps (nor serves) a response holding NaN or Infinity."""

import json
import logging

import pytest

from chatd.cache import MemoryCache, SafeCache


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_a_response_with_a_non_finite_number_is_not_stored_and_is_logged(number, caplog):
    inner = MemoryCache(10_000)
    cache = SafeCache(inner)
    body = {"choices": [{"logprobs": {"content": [{"token": "a", "logprob": number}]}}]}
    with caplog.at_level(logging.WARNING, logger="chatd.cache"):
        cache.put("k", json.dumps(body).encode())  # Python writes NaN/Infinity by default
    assert inner.get("k") is None and cache.get("k") is None
    assert "NaN or Infinity" in caplog.text


def test_an_entry_with_a_non_finite_number_already_stored_reads_as_a_miss(caplog):
    inner = MemoryCache(10_000)
    inner.put("k", b'{"logprob": NaN}')
    with caplog.at_level(logging.WARNING, logger="chatd.cache"):
        assert SafeCache(inner).get("k") is None
    assert "NaN or Infinity" in caplog.text


def test_finite_json_and_text_that_merely_says_nan_are_stored():
    cache = SafeCache(MemoryCache(10_000))
    value = json.dumps({"content": "NaN Infinity -Infinity", "logprob": -1e300}).encode()
    cache.put("k", value)
    assert cache.get("k") == value
