"""The Redis response cache against a real redis-server that this module starts on loopback.

Without redis-server (or the `redis` package) these tests skip on a developer machine and fail
in CI (env CI set), where .ci/run installs both: a cache backend nobody tests is a broken one.
"""

from __future__ import annotations

import logging
import socket
import time

import pytest

from chatd.cache import (
    RedisCache,
    SafeCache,
    cache_key,
    is_deterministic,
    open_cache,
)
from chatd.cache.redis_cache import KEY_PREFIX
from tests.conftest import free_port, redis_package


@pytest.fixture
def raw(redis_url):
    """A plain client on the test server, on an emptied database."""
    client = redis_package().Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def cache(redis_url, raw):
    c = RedisCache(redis_url)
    yield c
    c.close()


def test_round_trip(cache):
    assert cache.get("k") is None
    cache.put("k", b"\x00response\xff")
    cache.put("other", b"two")
    assert cache.get("k") == b"\x00response\xff"
    assert cache.get("other") == b"two"
    cache.put("k", b"replaced")
    assert cache.get("k") == b"replaced"


def test_keys_are_prefixed_and_nothing_else_is_written(cache, raw):
    key = cache_key("m", {"messages": [{"role": "user", "content": "hi"}], "seed": 1})
    cache.put(key, b"v")
    assert KEY_PREFIX == "chatd:"
    assert raw.keys("*") == [f"chatd:{key}".encode()]
    assert raw.get(f"chatd:{key}") == b"v"
    # Something else in the same database under the bare key is not ours.
    raw.set(key, b"foreign")
    assert cache.get(key) == b"v"


def test_no_ttl_means_no_expiry(cache, raw):
    cache.put("k", b"v")
    assert raw.ttl("chatd:k") == -1  # -1: exists, no expiry


def test_ttl_is_set_on_every_put_and_expires(redis_url, raw):
    cache = RedisCache(redis_url, ttl_seconds=60)
    try:
        cache.put("k", b"v")
        assert 59 <= raw.ttl("chatd:k") <= 60
        raw.expire("chatd:k", 5)
        cache.put("k", b"v2")  # a rewrite starts the ttl again
        assert 59 <= raw.ttl("chatd:k") <= 60
    finally:
        cache.close()

    short = RedisCache(redis_url, ttl_seconds=1)
    try:
        short.put("gone", b"v")
        assert short.get("gone") == b"v"
        deadline = time.monotonic() + 5
        while short.get("gone") is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert short.get("gone") is None
        assert raw.exists("chatd:gone") == 0
    finally:
        short.close()


def test_open_cache_redis_url_with_ttl(redis_url, raw, tmp_path):
    cache = open_cache(f"{redis_url}?ttl=30", tmp_path, 100)
    try:
        assert isinstance(cache, SafeCache)
        assert isinstance(cache.inner, RedisCache)
        assert cache.inner.ttl_seconds == 30
        cache.put("k", b"v")
        assert cache.get("k") == b"v"
        assert 29 <= raw.ttl("chatd:k") <= 30
    finally:
        cache.close()
    assert not any(tmp_path.iterdir())  # Redis writes no local file


@pytest.mark.parametrize("ttl", ["soon", "0", "-5", "1.5"])
def test_open_cache_rejects_a_bad_ttl(ttl, tmp_path):
    with pytest.raises(ValueError, match="ttl must be"):
        open_cache(f"redis://127.0.0.1:6379/0?ttl={ttl}", tmp_path, 100)


def _serve(cache, body: dict) -> tuple[bytes, bool]:
    """The HTTP layer's use of the cache, in short: (answer, whether it came from the cache)."""
    key = cache_key("m", body)
    if is_deterministic(body):
        hit = cache.get(key)
        if hit is not None:
            return hit, True
    answer = b'{"choices":[{"message":{"content":"hi"}}]}'
    if is_deterministic(body):
        cache.put(key, answer)
    return answer, False


def test_request_path_hits_on_the_second_identical_request(redis_url, raw, tmp_path):
    cache = open_cache(redis_url, tmp_path, 100)
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    try:
        assert _serve(cache, body) == (b'{"choices":[{"message":{"content":"hi"}}]}', False)
        assert _serve(cache, {**body, "stream": True})[1] is True
        assert len(raw.keys("chatd:*")) == 1
    finally:
        cache.close()


def test_safe_cache_survives_a_port_where_nothing_listens(caplog):
    redis_package()
    dead = f"redis://127.0.0.1:{free_port()}/0"
    cache = SafeCache(RedisCache(dead), cooldown_s=0)  # every call really tries the server
    body = {"messages": [{"role": "user", "content": "hi"}], "seed": 3}
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="chatd.cache"):
        assert cache.get("k") is None
        cache.put("k", b"v")  # must not raise
        for _ in range(3):
            answer, hit = _serve(cache, body)
            assert (answer[:11], hit) == (b'{"choices":', False)
    # Refused connections fail at once: no retries with backoff on the request path.
    assert time.monotonic() - start < 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # one per failure burst, not one per request
    assert "RedisCache" in warnings[0]
    cache.close()


def test_a_server_that_never_answers_costs_one_timeout_then_nothing():
    redis_package()
    # A socket that listens but never accepts: connects succeed, replies never come.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        cache = SafeCache(RedisCache(url), cooldown_s=30)
        start = time.monotonic()
        assert cache.get("k") is None
        first = time.monotonic() - start
        for _ in range(20):  # the backend rests: these never reach the socket
            assert cache.get("k") is None
            cache.put("k", b"v")
        rest = time.monotonic() - start - first
        cache.close()
    assert first < 2, f"one get against a silent server took {first:.2f}s"
    assert rest < 0.1, f"resting calls took {rest:.2f}s"
