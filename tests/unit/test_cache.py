import logging

import pytest

from chatd.cache import (
    MemoryCache,
    SafeCache,
    SQLiteCache,
    cache_key,
    is_deterministic,
    open_cache,
    parse_flag,
)

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _body(**extra):
    return {"messages": [{"role": "user", "content": "Say hi"}], "temperature": 0, **extra}


# --- keys ---------------------------------------------------------------------------------


def test_key_is_a_sha256_hex_digest():
    key = cache_key(MODEL, _body())
    assert len(key) == 64
    assert int(key, 16) >= 0


@pytest.mark.parametrize(
    ("a", "b"),
    [
        pytest.param(
            _body(stream=True, stream_options={"include_usage": True}),
            _body(),
            id="stream-vs-not",
        ),
        pytest.param(_body(stream=False), _body(stream=True), id="stream-false-vs-true"),
        pytest.param(_body(max_tokens=16), _body(max_completion_tokens=16), id="max-tokens"),
        pytest.param(_body(stop="x"), _body(stop=["x"]), id="stop-string-vs-list"),
        pytest.param(
            _body(seed=None, top_p=None, tools=None, response_format=None),
            _body(),
            id="explicit-nulls",
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": "Say hi", "name": None}], "temperature": 0},
            _body(),
            id="nested-null",
        ),
        pytest.param(
            {"temperature": 0, "response_format": {"value": {"b": 1, "a": 2}, "type": "json"}},
            {"response_format": {"type": "json", "value": {"a": 2, "b": 1}}, "temperature": 0},
            id="reordered-keys",
        ),
        pytest.param(_body(user="alice"), _body(user="bob"), id="user"),
        pytest.param(_body(model="tgi"), _body(), id="body-model-alias"),
        pytest.param(_body(temperature=0.0), _body(temperature=0), id="float-zero-vs-int"),
    ],
)
def test_same_key_for_requests_that_mean_the_same(a, b):
    assert cache_key(MODEL, a) == cache_key(MODEL, b)


@pytest.mark.parametrize(
    ("model", "body"),
    [
        pytest.param("other/model", _body(), id="model"),
        pytest.param(
            MODEL,
            {"messages": [{"role": "user", "content": "Say bye"}], "temperature": 0},
            id="messages",
        ),
        pytest.param(
            MODEL,
            {"messages": [{"role": "system", "content": "Say hi"}], "temperature": 0},
            id="role",
        ),
        pytest.param(MODEL, _body(temperature=0.7, seed=1), id="temperature"),
        pytest.param(MODEL, _body(seed=1), id="seed"),
        pytest.param(MODEL, _body(max_tokens=17), id="max-tokens"),
        pytest.param(MODEL, _body(stop=["x", "y"]), id="stop"),
        pytest.param(MODEL, _body(n=2), id="n"),
        pytest.param(MODEL, _body(logprobs=True, top_logprobs=2), id="logprobs"),
    ],
)
def test_different_key_for_requests_that_differ(model, body):
    assert cache_key(model, body) != cache_key(MODEL, _body())


def test_seeds_differ_from_each_other():
    assert cache_key(MODEL, _body(seed=1)) != cache_key(MODEL, _body(seed=2))


def test_max_completion_tokens_wins_over_max_tokens_as_in_the_protocol():
    both = _body(max_tokens=5, max_completion_tokens=9)
    assert cache_key(MODEL, both) == cache_key(MODEL, _body(max_tokens=9))
    assert cache_key(MODEL, both) != cache_key(MODEL, _body(max_tokens=5))


def test_key_does_not_mutate_the_body():
    body = _body(stream=True, stop="x", max_completion_tokens=3, seed=None)
    snapshot = repr(body)
    cache_key(MODEL, body)
    assert repr(body) == snapshot


def _image_message(url: str) -> dict:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, False),
        ({"temperature": None}, False),
        ({"temperature": 0}, True),
        ({"temperature": 0.0}, True),
        ({"temperature": 0.7}, False),
        ({"temperature": 1e-9}, False),
        ({"temperature": False}, False),
        ({"seed": 42}, True),
        ({"seed": 0}, True),
        ({"seed": None}, False),
        ({"seed": None, "temperature": 0}, True),
        ({"seed": 7, "temperature": 1.2}, True),
        ({"seed": 7, "n": 3, "temperature": 1.0}, True),
        ({"n": 3, "temperature": 1.0}, False),
        # An image behind a URL may change; a data URL is its image.
        ({"temperature": 0, "messages": [_image_message("https://example.com/a.png")]}, False),
        ({"seed": 1, "messages": [_image_message("HTTP://example.com/a.png")]}, False),
        ({"temperature": 0, "messages": [_image_message("data:image/png;base64,AAAA")]}, True),
        ({"temperature": 0, "messages": [{"role": "user", "content": "hi"}]}, True),
    ],
)
def test_is_deterministic(body, expected):
    assert is_deterministic(body) is expected


@pytest.mark.parametrize(
    ("value", "default", "expected"),
    [
        ("true", False, True),
        ("TRUE", False, True),
        ("True", False, True),
        ("1", False, True),
        ("yes", False, True),
        ("YeS", False, True),
        (" true ", False, True),
        ("false", True, False),
        ("FALSE", True, False),
        ("0", True, False),
        ("no", True, False),
        ("No", True, False),
        (None, True, True),
        (None, False, False),
        ("", True, True),
        ("maybe", True, True),
        ("maybe", False, False),
        ("2", False, False),
    ],
)
def test_parse_flag(value, default, expected):
    assert parse_flag(value, default) is expected


# --- backends -----------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def make_cache(request, tmp_path):
    made = []

    def make(max_bytes):
        if request.param == "memory":
            cache = MemoryCache(max_bytes)
        else:
            cache = SQLiteCache(tmp_path / "nested" / "dir" / "c.sqlite3", max_bytes)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


def test_round_trip(make_cache):
    cache = make_cache(1000)
    assert cache.get("a") is None
    cache.put("a", b"alpha")
    cache.put("b", b"\x00\xffbin")
    assert cache.get("a") == b"alpha"
    assert cache.get("b") == b"\x00\xffbin"
    assert cache.get("c") is None
    assert (len(cache), cache.size) == (2, 10)


def test_put_replaces_and_recounts_size(make_cache):
    cache = make_cache(1000)
    cache.put("a", b"12345")
    cache.put("a", b"12")
    assert cache.get("a") == b"12"
    assert (len(cache), cache.size) == (1, 2)


def test_lru_evicts_the_least_recently_used_not_the_oldest_written(make_cache):
    cache = make_cache(10)
    cache.put("a", b"aaaa")
    cache.put("b", b"bbbb")
    assert cache.get("a") == b"aaaa"  # a is now used more recently than b
    cache.put("c", b"cccc")  # 12 bytes > 10: one must go, and it is b
    assert cache.get("b") is None
    assert cache.get("a") == b"aaaa"
    assert cache.get("c") == b"cccc"
    assert (len(cache), cache.size) == (2, 8)


def test_eviction_removes_as_many_as_needed(make_cache):
    cache = make_cache(10)
    for key in "abcde":
        cache.put(key, b"xx")
    cache.put("big", b"y" * 8)  # 10 + 8 bytes: the four least recently used must go
    assert [k for k in "abcde" if cache.get(k) is not None] == ["e"]
    assert cache.get("big") == b"y" * 8
    assert (len(cache), cache.size) == (2, 10)


def test_value_larger_than_the_cap_is_not_stored_and_evicts_nothing(make_cache):
    cache = make_cache(8)
    cache.put("a", b"aaaa")
    cache.put("huge", b"h" * 9)
    assert cache.get("huge") is None
    assert cache.get("a") == b"aaaa"
    assert (len(cache), cache.size) == (1, 4)


def test_sqlite_persists_across_reopen_with_its_lru_order(tmp_path):
    path = tmp_path / "c.sqlite3"
    cache = SQLiteCache(path, 10)
    cache.put("a", b"aaaa")
    cache.put("b", b"bbbb")
    assert cache.get("a") == b"aaaa"
    cache.close()

    reopened = SQLiteCache(path, 10)
    try:
        assert reopened.get("b") == b"bbbb"  # now b is the most recently used, a the least
        assert (len(reopened), reopened.size) == (2, 8)
        reopened.put("c", b"cccc")
        assert reopened.get("a") is None
        assert reopened.get("b") == b"bbbb"
        assert reopened.get("c") == b"cccc"
    finally:
        reopened.close()


def test_sqlite_uses_wal_and_the_documented_table(tmp_path):
    import sqlite3

    path = tmp_path / "c.sqlite3"
    SQLiteCache(path, 100).close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        columns = [(r[1], r[2]) for r in db.execute("PRAGMA table_info(responses)")]
        assert columns == [
            ("key", "TEXT"),
            ("value", "BLOB"),
            ("size", "INTEGER"),
            ("used", "REAL"),
        ]
    finally:
        db.close()


def test_sqlite_is_usable_from_another_thread(tmp_path):
    import threading

    cache = SQLiteCache(tmp_path / "c.sqlite3", 1000)
    errors = []

    def work():
        try:
            for i in range(50):
                cache.put(f"k{i}", b"v" * 10)
                assert cache.get(f"k{i}") == b"v" * 10
        except Exception as exc:  # surfaced below: an assert in a thread fails nothing
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert (len(cache), cache.size) == (50, 500)
    finally:
        cache.close()


# --- SafeCache ----------------------------------------------------------------------------


class Broken:
    """A backend whose every call fails, counting the calls."""

    def __init__(self):
        self.calls = 0

    def get(self, key):
        self.calls += 1
        raise OSError("disk on fire")

    def put(self, key, value):
        self.calls += 1
        raise OSError("disk on fire")

    def close(self):
        raise OSError("disk on fire")


class Flaky(MemoryCache):
    """A memory cache that fails while `broken` is set."""

    broken = False

    def get(self, key):
        if self.broken:
            raise ConnectionError("gone")
        return super().get(key)

    def put(self, key, value):
        if self.broken:
            raise ConnectionError("gone")
        super().put(key, value)


def test_safe_cache_swallows_and_logs_backend_failures(caplog):
    inner = Broken()
    cache = SafeCache(inner, cooldown_s=0)
    with caplog.at_level(logging.DEBUG, logger="chatd.cache"):
        assert cache.get("k") is None
        assert cache.put("k", b"v") is None
        assert cache.get("k") is None
        cache.close()
    assert inner.calls == 3  # cooldown 0: every call reached the backend
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    # One warning for the burst (the later failures go to debug), one for close.
    assert len(warnings) == 2
    assert "get" in warnings[0].getMessage()
    assert "disk on fire" in warnings[0].getMessage()
    assert "Broken" in warnings[0].getMessage()
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == 2


def test_safe_cache_rests_a_failing_backend_then_retries(caplog):
    now = [100.0]
    inner = Flaky(1000)
    cache = SafeCache(inner, cooldown_s=5, clock=lambda: now[0])
    cache.put("k", b"v")
    inner.broken = True
    with caplog.at_level(logging.INFO, logger="chatd.cache"):
        assert cache.get("k") is None  # fails: the backend rests for 5 s
        inner.broken = False
        now[0] += 4.9
        assert cache.get("k") is None  # still resting, even though it works again
        cache.put("k2", b"v2")
        assert inner.get("k2") is None  # the put was skipped, not sent
        now[0] += 0.2
        assert cache.get("k") == b"v"  # tried again, and it works
        cache.put("k2", b"v2")
        assert cache.get("k2") == b"v2"
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert len(messages) == 2
    assert messages[0][0] == logging.WARNING and "gone" in messages[0][1]
    assert messages[1][0] == logging.INFO and "works again" in messages[1][1]


def test_a_new_burst_warns_again(caplog):
    inner = Flaky(1000)
    cache = SafeCache(inner, cooldown_s=0)
    with caplog.at_level(logging.WARNING, logger="chatd.cache"):
        inner.broken = True
        cache.get("k")
        cache.get("k")
        inner.broken = False
        cache.get("k")
        inner.broken = True
        cache.put("k", b"v")
    assert len(caplog.records) == 2


def test_safe_cache_passes_values_through():
    cache = SafeCache(MemoryCache(100))
    cache.put("k", b"value")
    assert cache.get("k") == b"value"
    assert cache.get("missing") is None


# --- open_cache ---------------------------------------------------------------------------


def test_open_cache_defaults_to_sqlite_in_the_cache_dir(tmp_path):
    for url in (None, "sqlite", "SQLite"):
        cache = open_cache(url, tmp_path / "cache", 1000)
        try:
            assert isinstance(cache, SafeCache)
            assert isinstance(cache.inner, SQLiteCache)
            assert cache.inner.path == tmp_path / "cache" / "responses.sqlite3"
            assert cache.inner.max_bytes == 1000
            cache.put("k", b"v")
            assert cache.get("k") == b"v"
        finally:
            cache.close()
    assert (tmp_path / "cache" / "responses.sqlite3").is_file()


def test_open_cache_memory(tmp_path):
    cache = open_cache("memory", tmp_path, 123)
    assert isinstance(cache, SafeCache)
    assert isinstance(cache.inner, MemoryCache)
    assert cache.inner.max_bytes == 123
    assert not any(tmp_path.iterdir())  # memory means no file


@pytest.mark.parametrize("url", ["", "memcached://x", "postgres://db", "sqlite3", "redis"])
def test_open_cache_rejects_what_it_does_not_know(url, tmp_path):
    with pytest.raises(ValueError, match="unknown response cache") as info:
        open_cache(url, tmp_path, 100)
    assert "redis://" in str(info.value)
