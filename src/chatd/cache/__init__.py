"""The response cache behind the `x-use-cache` header (default true).

A repeated request that asks for a repeatable answer (temperature 0 or a seed) is answered
from the cache: `keys` decides what is cacheable and under which key, `backends` stores the finished
responses in memory, in SQLite (the default) or in Redis. `open_cache` wraps every backend in
`SafeCache`, so a failing cache costs a miss, never a request.
"""

from chatd.cache.backends import MemoryCache, ResponseCache, SafeCache, open_cache
from chatd.cache.keys import cache_key, is_deterministic, parse_flag
from chatd.cache.redis_cache import RedisCache
from chatd.cache.sqlite import SQLiteCache

__all__ = [
    "MemoryCache",
    "RedisCache",
    "ResponseCache",
    "SQLiteCache",
    "SafeCache",
    "cache_key",
    "is_deterministic",
    "open_cache",
    "parse_flag",
]
