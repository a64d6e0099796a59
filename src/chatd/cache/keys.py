"""What may be cached, under which key, and the `x-use-cache` header.

A response is cacheable only when the request asks for a repeatable answer:

- `temperature` is explicitly 0 (greedy decoding), or
- a `seed` is given (not null): every request owns its RNG, seeded from `seed`, so the same
  request draws the same random numbers whatever else runs beside it (for `n > 1` too).

Repeatable, not invariant: the engine does not promise the same text for such a request.
llama.cpp computes a prompt token's numbers differently alone, in a suffix after a cached
prefix, or in a whole prefill, and greedy or seeded text follows those numbers (measured: 10
of 10 SmolLM2 prompts diverged between a fresh slot and a cached prefix). The cache stores the
first answer and replays it; it does not claim that answer is the only one.

An absent temperature is not 0 (the default samples), so such requests are never cached;
nor are requests with http(s) image URLs, whose images may change behind the same URL (a
`data:` URL is its image, so those are).

The key is the sha256 of the resolved model id and the request body, normalised so that
requests that mean the same thing share a key: `stream` and `stream_options` are dropped (the
cache stores the finished result; the HTTP layer replays it as JSON or as SSE), so is `user`,
and so is the body's `model` (the resolved id passed in stands for it, whatever alias the
client used). Keys whose value is null are dropped at any depth (null = absent everywhere in
the protocol), `max_completion_tokens` is spelled `max_tokens`, a `stop` string is a
one-item list, integral floats are ints (JSON `0` and `0.0` are the same temperature), and
keys are sorted at every depth. Headers never enter the key: user-agent, `x-amzn-trace-id`
and `x-stainless-*` differ per request without changing the answer.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Fields that change how the answer is delivered or billed, never what it says.
_DELIVERY_FIELDS = ("stream", "stream_options", "user", "model")

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


def is_deterministic(body: dict) -> bool:
    """True when the request asks for a repeatable answer (an explicit `temperature` of 0, or
    a `seed`) and fetches no image from a URL: such a request may be answered from the cache
    (see the module doc for what the engine does and does not repeat)."""
    if _remote_images(body):
        return False
    if body.get("seed") is not None:
        return True
    temperature = body.get("temperature")
    # bool is an int subclass: `false` is not a temperature, and the protocol rejects it.
    return (
        isinstance(temperature, int | float)
        and not isinstance(temperature, bool)
        and (temperature == 0)
    )


def _remote_images(body: dict) -> bool:
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            url = part.get("image_url", {}).get("url", "") if isinstance(part, dict) else ""
            if isinstance(url, str) and url and not url.lower().startswith("data:"):
                return True
    return False


def cache_key(model_id: str, body: dict) -> str:
    """The sha256 hex digest of the model id and the normalised body (see the module doc)."""
    canonical = json.dumps(
        {"model": model_id, "body": _normalise(body)},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def parse_flag(value: str | None, default: bool) -> bool:
    """A boolean header (`x-use-cache`, `x-wait-for-model`): true/false/1/0/yes/no, any case.

    A missing or unrecognised value gives `default`, so a typo never turns a feature off.
    """
    if value is None:
        return default
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    return default


def _normalise(body: dict) -> dict:
    out = {k: v for k, v in body.items() if k not in _DELIVERY_FIELDS}
    # The protocol reads max_completion_tokens first when both are given: keep that one.
    limit = out.pop("max_completion_tokens", None)
    if limit is not None:
        out["max_tokens"] = limit
    if isinstance(out.get("stop"), str):
        out["stop"] = [out["stop"]]
    return _canonical(out)


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
