"""A response cache on a Redis server, shared by every chatd that points at it.

Redis bounds its own memory (its `maxmemory` and eviction policy), so there is no byte cap
here; `ttl_seconds` expires entries. Keys are prefixed so that the cache can share a database.
"""

from __future__ import annotations

KEY_PREFIX = "chatd:"

# The cache sits on the request path: a slow or dead server must cost little. A miss is
# cheap, so no retries (redis-py retries connection errors with backoff by default).
_SOCKET_TIMEOUT_S = 0.5


class RedisCache:
    """Responses as Redis strings under `chatd:<key>`, optionally expiring after ttl_seconds."""

    def __init__(self, url: str, ttl_seconds: int | None = None):
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as exc:  # the one backend with a dependency of its own
            raise RuntimeError(
                "the Redis response cache needs the `redis` package: pip install redis"
            ) from exc
        self.ttl_seconds = ttl_seconds
        # from_url connects lazily: a server that is down shows up on the first get/put.
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=_SOCKET_TIMEOUT_S,
            socket_connect_timeout=_SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
        )

    def get(self, key: str) -> bytes | None:
        return self._client.get(KEY_PREFIX + key)

    def put(self, key: str, value: bytes) -> None:
        self._client.set(KEY_PREFIX + key, value, ex=self.ttl_seconds)

    def close(self) -> None:
        self._client.close()
