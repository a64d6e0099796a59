"""The Redis response cache against a real redis-server that this module starts on loopback.

Without redis-server (or the `redis` package) these tests skip on a developer machine and fail
in CI (env CI set), where .ci/run installs both: a cache backend nobody tests is a broken one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading

import pytest

from chatd.cache import RedisCache, SafeCache, cache_key, open_cache
from chatd.cache.redis_cache import KEY_PREFIX
from tests.conftest import Server, chat, free_port, redis_package, sse_events, wait_until


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
        wait_until(lambda: short.get("gone") is None, 10, "the entry to expire")
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


@pytest.fixture(scope="module")
def chatd_on_redis(redis_url):
    """A real chatd whose response cache is the test's redis-server."""
    with Server("--cache-url", redis_url, "--parallel", "2", "--ctx", "512") as srv:
        srv.wait_ready()
        yield srv.url


def test_chatd_answers_a_repeated_request_from_redis(chatd_on_redis, raw):
    body = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 4}
    first = chat(chatd_on_redis, **body)
    assert first.status_code == 200 and first.headers["x-cache"] == "miss"
    assert len(raw.keys("chatd:*")) == 1  # stored in Redis, under chatd's prefix
    again = chat(chatd_on_redis, **body)
    assert again.headers["x-cache"] == "hit"
    assert again.json()["choices"] == first.json()["choices"]
    replayed = sse_events(chatd_on_redis, **body)  # a stream is answered from the same entry
    assert replayed[-1] == "[DONE]"
    text = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in map(json.loads, replayed[:-1])
        if c["choices"]
    )
    assert text == first.json()["choices"][0]["message"]["content"]
    assert len(raw.keys("chatd:*")) == 1
    sampled = chat(chatd_on_redis, **{**body, "temperature": 1})  # may vary: never cached
    assert "x-cache" not in sampled.headers and len(raw.keys("chatd:*")) == 1


def test_safe_cache_survives_a_port_where_nothing_listens(caplog):
    redis_package()
    dead = f"redis://127.0.0.1:{free_port()}/0"
    cache = SafeCache(RedisCache(dead), cooldown_s=0)  # every call really tries the server
    with caplog.at_level(logging.WARNING, logger="chatd.cache"):
        for _ in range(3):
            assert cache.get("k") is None
            cache.put("k", b"v")  # must not raise
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # one per failure burst, not one per request
    assert "RedisCache" in warnings[0]
    cache.close()


def test_a_server_that_never_answers_is_tried_once_then_rested():
    redis_package()
    # A server that takes connections and never replies: each get times out.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        accepted: list[socket.socket] = []

        def accept() -> None:
            with contextlib.suppress(OSError):  # the listening socket closed
                while True:
                    accepted.append(silent.accept()[0])

        threading.Thread(target=accept, daemon=True).start()
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        cache = SafeCache(RedisCache(url), cooldown_s=300)
        assert cache.get("k") is None
        for _ in range(20):  # the backend rests: these never reach the server
            assert cache.get("k") is None
            cache.put("k", b"v")
        cache.close()
        wait_until(lambda: accepted, 10, "the one connection to be accepted")
        assert len(accepted) == 1
        for conn in accepted:
            conn.close()
