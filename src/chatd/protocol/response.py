"""The response side, in OpenAI's shape (both clients parse it): what every body and chunk of
one answer shares, and the usage block."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from chatd import __version__


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
