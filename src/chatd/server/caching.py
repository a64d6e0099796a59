"""The `x-use-cache` layer of one request: look the answer up, store it once it is whole.

Only deterministic requests are cached (temperature 0, or a seed: `cache.keys`); the key is
the served model's id and the normalised body, never the headers. The answer is stored as the
finished non-stream body and replayed as SSE to stream requests. `x-cache: hit | miss` says
what happened; requests that are not cacheable (or `x-use-cache: false`) get no x-cache.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from chatd.cache import cache_key, is_deterministic, parse_flag


class CacheLookup:
    def __init__(self, backend, metrics, key: str | None):
        self._backend, self._metrics, self._key = backend, metrics, key
        self.headers: dict[str, str] = {}

    @classmethod
    def for_request(cls, request: Request, model_id: str, data: dict[str, Any]) -> CacheLookup:
        backend = request.app.state.cache
        wanted = parse_flag(request.headers.get("x-use-cache"), default=True)
        usable = backend is not None and wanted and is_deterministic(data)
        return cls(
            backend, request.app.state.metrics, cache_key(model_id, data) if usable else None
        )

    def lookup(self) -> dict[str, Any] | None:
        if self._key is None:
            return None
        raw = self._backend.get(self._key)
        hit = raw is not None
        self.headers = {"x-cache": "hit" if hit else "miss"}
        (self._metrics.cache_hit if hit else self._metrics.cache_miss)()
        return json.loads(raw) if hit else None

    def store(self, completion: dict[str, Any]) -> None:
        """Only whole answers: a choice cut by an error never reaches here."""
        if self._key is not None:
            self._backend.put(self._key, json.dumps(completion, ensure_ascii=False).encode())
