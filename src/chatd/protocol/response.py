"""The response side, in OpenAI's shape (both clients parse it): what every body and chunk of
one answer shares, and the usage block."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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


# -- the same shapes as models: the OpenAPI document's response schemas ------------------------
# The code above builds plain dicts (fast, and cached answers replay them as they are); these
# models describe exactly what it sends. tests/test_openapi.py checks real responses against
# them, and `extra="forbid"` makes a field added on one side only a failure there.


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _absent_or(description: str) -> Any:
    """A field that is left out rather than sent as null: no default in the schema."""
    return Field(None, description=description, json_schema_extra=_no_default)


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


FinishReason = Literal["stop", "length", "tool_calls"]


class ErrorBody(_Wire):
    """Every error, in the HF shape; also the data of a stream's last event when it fails."""

    error: str
    error_type: str = Field(
        description="validation, authentication, not_found, loading, load_failed, overloaded, "
        "pull_refused, unsupported_model, insufficient_storage, timeout, cancelled, shutdown "
        "or generation"
    )
    estimated_time: float = _absent_or("seconds until the model is loaded (503 `loading` only)")


class PromptTokensDetails(_Wire):
    cached_tokens: int = Field(description="prompt tokens whose KV state was reused")


class CompletionUsage(_Wire):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class ChatCompletionTopLogprob(_Wire):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatCompletionTokenLogprob(ChatCompletionTopLogprob):
    top_logprobs: list[ChatCompletionTopLogprob]


class ChoiceLogprobs(_Wire):
    content: list[ChatCompletionTokenLogprob]


class CalledFunction(_Wire):
    name: str
    arguments: str = Field(description="the arguments, as a JSON object in a string")


class ChatCompletionMessageToolCall(_Wire):
    id: str
    type: Literal["function"]
    function: CalledFunction


class ChatCompletionMessage(_Wire):
    role: Literal["assistant"]
    content: str | None = Field(description="null when the answer is only tool calls")
    tool_calls: list[ChatCompletionMessageToolCall] = _absent_or("present when the model called")


class Choice(_Wire):
    index: int
    message: ChatCompletionMessage
    logprobs: ChoiceLogprobs | None = Field(description="null unless `logprobs` was asked")
    finish_reason: FinishReason


class ChatCompletion(_Wire):
    """The body of a non-stream answer."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[Choice]
    usage: CompletionUsage


class FunctionFragment(_Wire):
    name: str = _absent_or("in a call's first fragment only")
    arguments: str


class ToolCallFragment(_Wire):
    index: int
    id: str = _absent_or("in a call's first fragment only")
    type: Literal["function"] = _absent_or("in a call's first fragment only")
    function: FunctionFragment


class ChoiceDelta(_Wire):
    role: Literal["assistant"] = _absent_or("in each choice's first chunk only")
    content: str = _absent_or("the text since the last chunk (absent beside tool_calls)")
    tool_calls: list[ToolCallFragment] = _absent_or("a call in fragments: id and name first")


class ChunkChoice(_Wire):
    index: int
    delta: ChoiceDelta
    logprobs: ChoiceLogprobs | None
    finish_reason: FinishReason | None = Field(description="set in each choice's last chunk")


class ChatCompletionChunk(_Wire):
    """One `data:` event of a stream; the stream ends with `data: [DONE]`."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice] = Field(description="empty in the usage chunk")
    usage: CompletionUsage | None = _absent_or(
        "only with stream_options.include_usage: null in every chunk but a last one of its own"
    )


# -- the service routes ------------------------------------------------------------------------

ModelStateName = Literal["downloading", "available", "loading", "ready", "failed"]


class Health(_Wire):
    """200 once the default model is ready; before, the 503 a request would get."""

    status: Literal["ok"]
    model: str


class ModelCard(_Wire):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    state: ModelStateName
    aliases: list[str]
    downloaded_bytes: int = _absent_or("bytes on disk so far, while downloading")
    total_bytes: int = _absent_or("bytes to download, while downloading")
    estimated_time: float = _absent_or("seconds until loaded, while downloading or loading")
    error: str = _absent_or("why downloading or loading failed, when it did")


class ModelList(_Wire):
    object: Literal["list"]
    data: list[ModelCard]


class Limits(_Wire):
    max_n: int
    max_stop: int
    max_top_logprobs: int


class Sequences(_Wire):
    running: int
    waiting: int


class ServerInfo(_Wire):
    """The default model and the serving limits (TGI's /info, chatd's own fields)."""

    version: str
    model_id: str
    model_path: str
    state: ModelStateName
    runner: str | None = Field(description="null until the model is loaded")
    context_length: int
    max_parallel: int
    max_batch_tokens: int
    limits: Limits
    sequences: Sequences | None = Field(description="null until the model is loaded")
