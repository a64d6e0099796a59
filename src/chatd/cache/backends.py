"""Where cached responses live: the backend protocol, an in-memory LRU, the failure guard and
`open_cache`, which picks a backend from a URL.

Backends store opaque bytes under the keys of `chatd.cache.keys`; what the bytes mean (a
finished response, serialised) is the HTTP layer's business. SQLite (the default) and Redis
live in their own modules.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from chatd.cache.redis_cache import RedisCache
from chatd.cache.sqlite import SQLiteCache

log = logging.getLogger(__name__)


class ResponseCache(Protocol):
    def get(self, key: str) -> bytes | None:
        """The stored value, or None on a miss."""
        ...

    def put(self, key: str, value: bytes) -> None:
        """Stores value under key, replacing what was there."""
        ...

    def close(self) -> None:
        """Releases files and connections; the cache is not used afterwards."""
        ...


class MemoryCache:
    """An in-process LRU capped at `max_bytes` of stored values; lost on restart."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        # Cheap insurance: the HTTP layer may call from a thread pool as well as the loop.
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """Bytes of values stored now."""
        return self._size

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> bytes | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)  # a read makes it the most recently used
            return value

    def put(self, key: str, value: bytes) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._size -= len(old)
            if len(value) > self.max_bytes:
                return  # storing it would evict everything and still not fit
            self._entries[key] = value
            self._size += len(value)
            while self._size > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._size -= len(evicted)

    def close(self) -> None:
        with self._lock:
            self._entries.clear()
            self._size = 0


class SafeCache:
    """Wraps a backend so that its failures never fail a request, nor its contents.

    Every exception from the backend is swallowed: `get` answers None (a miss), `put` does
    nothing. The first failure of a burst is logged as a warning, the rest at debug level, and
    recovery (every operation that failed works again) at info. After a failure the backend is
    left alone for `cooldown_s` seconds, so a dead server costs one timeout per cooldown instead
    of one (or two) per request: a failed `get` rests both operations (the backend is out of
    reach), a failed `put` only puts (a full disk or a read-only file still serves what it
    holds).

    A value that is JSON holding NaN or ±Infinity (which JSON does not have: the response that
    carried it could not be sent, and a replay of it would fail the same way) is never stored,
    and one already stored (before this guard, in a file that outlived the process) reads as a
    miss; either is logged as a warning. Values that are not JSON pass through untouched.
    """

    def __init__(
        self,
        inner: ResponseCache,
        cooldown_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.inner = inner
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._failing: set[str] = set()  # the operations whose last try failed
        self._retry_at = {"get": 0.0, "put": 0.0}

    def get(self, key: str) -> bytes | None:
        if self._resting("get"):
            return None
        try:
            value = self.inner.get(key)
        except Exception as exc:
            self._failed("get", exc, rests=("get", "put"))
            return None
        self._succeeded("get")
        if value is not None and _non_finite(value):
            log.warning("response cache: ignoring entry %s: it holds NaN or Infinity", key)
            return None
        return value

    def put(self, key: str, value: bytes) -> None:
        if _non_finite(value):
            log.warning("response cache: not storing %s: it holds NaN or Infinity", key)
            return
        if self._resting("put"):
            return
        try:
            self.inner.put(key, value)
        except Exception as exc:
            self._failed("put", exc, rests=("put",))
            return
        self._succeeded("put")

    def close(self) -> None:
        try:
            self.inner.close()
        except Exception as exc:
            log.warning("response cache: closing %s failed: %r", _name(self.inner), exc)

    def _resting(self, op: str) -> bool:
        return self._clock() < self._retry_at[op]

    def _failed(self, op: str, exc: Exception, rests: tuple[str, ...]) -> None:
        level = logging.DEBUG if self._failing else logging.WARNING
        log.log(
            level,
            "response cache: %s on %s failed, serving without it for %gs: %r",
            op,
            _name(self.inner),
            self._cooldown_s,
            exc,
        )
        self._failing.add(op)
        for rested in rests:
            self._retry_at[rested] = self._clock() + self._cooldown_s

    def _succeeded(self, op: str) -> None:
        if op in self._failing:
            self._failing.discard(op)
            if not self._failing:
                log.info("response cache: %s works again", _name(self.inner))


def open_cache(url: str | None, cache_dir: Path, max_bytes: int) -> ResponseCache:
    """The backend that `url` names, wrapped in `SafeCache`.

    - None or "sqlite": `cache_dir / "responses.sqlite3"`, capped at `max_bytes` (the default)
    - "memory": an in-process LRU capped at `max_bytes`
    - "redis://…" or "rediss://…": a Redis server; Redis' own `maxmemory` policy bounds it,
      and an optional `ttl=SECONDS` query parameter expires entries (`redis://host/0?ttl=3600`)
    """
    kind = ("sqlite" if url is None else url).strip()
    if kind.lower() == "sqlite":
        return SafeCache(SQLiteCache(Path(cache_dir) / "responses.sqlite3", max_bytes))
    if kind.lower() == "memory":
        return SafeCache(MemoryCache(max_bytes))
    if urlsplit(kind).scheme.lower() in ("redis", "rediss"):
        redis_url, ttl = _split_ttl(kind)
        return SafeCache(RedisCache(redis_url, ttl_seconds=ttl))
    raise ValueError(
        f"unknown response cache {url!r}: expected 'sqlite' (the default), 'memory', "
        "or a redis://host:port/db URL"
    )


def _split_ttl(url: str) -> tuple[str, int | None]:
    """Takes our own `ttl` query parameter out of a Redis URL (redis-py rejects it)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ttls = [v for k, v in query if k == "ttl"]
    if not ttls:
        return url, None
    try:
        ttl = int(ttls[-1])
    except ValueError:
        raise ValueError(
            f"response cache URL: ttl must be whole seconds, got {ttls[-1]!r}"
        ) from None
    if ttl <= 0:
        raise ValueError(f"response cache URL: ttl must be positive, got {ttl}")
    rest = urlencode([(k, v) for k, v in query if k != "ttl"])
    return urlunsplit(parts._replace(query=rest)), ttl


class _NonFiniteNumber(ValueError):
    pass


def _refuse_constant(name: str) -> float:
    raise _NonFiniteNumber(name)


def _non_finite(value: bytes) -> bool:
    """True for JSON holding NaN, Infinity or -Infinity (Python's json writes them by
    default); False for finite JSON and for bytes that are not JSON."""
    try:
        json.loads(value, parse_constant=_refuse_constant)
    except _NonFiniteNumber:
        return True
    except ValueError:  # not JSON (or not UTF-8): opaque bytes, not ours to judge
        return False
    return False


def _name(backend: object) -> str:
    return type(backend).__name__
