"""The request side of the chat-completion contract, in both dialects (HF/TGI and OpenAI).

Every optional field may be absent or an explicit null; unknown fields are ignored. What the
two dialects spell differently (stop, logit_bias, max_tokens, tool schemas) is normalised here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOP = 4
MAX_TOP_LOGPROBS = 20  # HF documents 0..5, OpenAI 0..20: we serve OpenAI's range
# OpenAI takes any int64 seed; unsigned 64-bit ones are accepted too (the engine takes seeds
# modulo 2**64, so -1 and 2**64 - 1 are the same seed).
MIN_SEED, MAX_SEED = -(2**63), 2**64 - 1


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageURL(_Lenient):
    url: str
    detail: str | None = None


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ImagePart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class FunctionCall(_Lenient):
    name: str
    arguments: str | dict[str, Any] | None = None


class ToolCall(_Lenient):
    id: str | None = None
    type: str | None = "function"
    function: FunctionCall


class Message(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Lenient):
    # OpenAI's rule: the model writes this name back, so it must be a plain word.
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    # OpenAI and HF 2.x call the schema `parameters`, TGI and older HF `arguments`.
    parameters: dict[str, Any] | None = None
    arguments: dict[str, Any] | None = None
    strict: bool | None = None

    @property
    def schema_(self) -> dict[str, Any]:
        return self.parameters or self.arguments or {"type": "object"}


class Tool(_Lenient):
    type: str = "function"
    function: FunctionDef


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: str | None = "function"
    function: NamedFunction


class ResponseFormat(_Lenient):
    type: Literal["text", "json", "json_object", "json_schema", "regex"]
    value: Any = None  # HF: a schema (json, json_object) or a pattern (regex)
    json_schema: dict[str, Any] | None = None  # OpenAI: {"name", "schema", "strict"}


class StreamOptions(_Lenient):
    include_usage: bool | None = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown fields are kept aside and ignored

    messages: list[Message] = Field(min_length=1)
    model: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0)
    logit_bias: list[float] | dict[int, float] | None = None
    seed: int | None = Field(None, ge=MIN_SEED, le=MAX_SEED)
    stop: str | list[str] | None = Field(None, validate_default=True)
    n: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    tool_prompt: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed, got {len(stops)}")
        return [s for s in stops if s]

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    @model_validator(mode="after")
    def _a_call_needs_tools(self) -> ChatRequest:
        demanded = self.tool_choice == "required" or isinstance(self.tool_choice, NamedToolChoice)
        if demanded and not self.tools:
            raise ValueError("tool_choice: a tool call is demanded, but no tools are given")
        return self

    @property
    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def bias_map(self, n_vocab: int) -> dict[int, float]:
        """logit_bias as {token id: bias}. HF's list form is a bias per token id, in order."""
        if isinstance(self.logit_bias, list):
            items = {i: b for i, b in enumerate(self.logit_bias) if b}
        else:
            items = dict(self.logit_bias or {})
        bad = [i for i in items if not 0 <= i < n_vocab]
        if bad:
            raise ValueError(
                f"logit_bias: token id {bad[0]} is outside the vocabulary (0..{n_vocab - 1})"
            )
        return {i: max(-100.0, min(100.0, b)) for i, b in items.items()}
