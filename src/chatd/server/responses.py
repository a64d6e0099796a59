"""The response side, in OpenAI's shape (both clients parse it): bodies, chunks, SSE framing."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from chatd import __version__
from chatd.engine.types import TokenLogprob


def sse(payload: dict[str, Any] | str) -> str:
    """One event per line pair; the end marker is exactly `data: [DONE]`."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


DONE = sse("[DONE]")


def logprobs_body(items: list[TokenLogprob]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": t.token,
                "logprob": t.logprob,
                "bytes": t.bytes,
                "top_logprobs": [
                    {"token": c.token, "logprob": c.logprob, "bytes": c.bytes} for c in t.top
                ],
            }
            for t in items
        ]
    }


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def body(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


@dataclass
class Envelope:
    """What every body and chunk of one response shares."""

    model: str
    runner: str
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))
    fingerprint: str | None = None  # given when replaying a cached response

    def _head(self, obj: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint or f"chatd-{__version__}-{self.runner}",
        }

    def completion(self, choices: list[dict[str, Any]], usage: Usage) -> dict[str, Any]:
        return {**self._head("chat.completion"), "choices": choices, "usage": usage.body()}

    def chunk(self, choices: list[dict[str, Any]], include_usage: bool) -> dict[str, Any]:
        body = {**self._head("chat.completion.chunk"), "choices": choices}
        if include_usage:
            body["usage"] = None
        return body

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": usage}
