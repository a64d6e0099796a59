"""The published OpenAPI 3.1 document (`/openapi.json`, Swagger UI at `/docs`).

FastAPI writes the paths; what it cannot see comes from here. The chat route reads its body
itself (any content type is JSON), so its request body, path parameters and responses are
declared by `chat_operation`, and the other routes' by `operation`, all as `$ref`s to the
pydantic models of `protocol/` (`MODELS`), whose schemas `install` puts into
`components.schemas`. JSON Schema says what it can of the request's cross-field rules
(`RULES`); the rest is in the descriptions.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from chatd.protocol.request import ChatRequest
from chatd.protocol.response import (
    ChatCompletion,
    ChatCompletionChunk,
    ErrorBody,
    Health,
    ModelList,
    ServerInfo,
)

REF = "#/components/schemas/{model}"
MODELS: list[type[BaseModel]] = [
    ChatRequest, ChatCompletion, ChatCompletionChunk, ErrorBody, Health, ModelList, ServerInfo,
]  # fmt: skip
SECURITY_SCHEME = "bearer"


def ref(model: type[BaseModel]) -> dict[str, str]:
    if model not in MODELS:
        raise ValueError(f"{model.__name__} is not one of the document's MODELS")
    return {"$ref": REF.format(model=model.__name__)}


def _present(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": [name], "properties": {name: schema}}


_NOT_NULL = {"not": {"type": "null"}}
_HOLDS_A_SCHEMA = {"type": "object", **_present("schema", _NOT_NULL)}

# Cross-field rules, as `allOf` members of the named component: if the first holds, the second
# must. chat/ and protocol/ check the same rules and answer 400 with a message naming them.
RULES: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {
    "ChatRequest": [
        (  # top_logprobs needs logprobs
            _present("top_logprobs", {"type": "integer", "minimum": 1}),
            _present("logprobs", {"const": True}),
        ),
        (  # a demanded call (required or a named function) needs tools
            _present("tool_choice", {"anyOf": [{"const": "required"}, {"type": "object"}]}),
            _present("tools", {"type": "array", "minItems": 1}),
        ),
    ],
    "ResponseFormat": [
        (
            _present("type", {"const": "regex"}),
            _present("value", {"type": "string", "minLength": 1}),
        ),
        (  # OpenAI's json_schema.schema, or TGI's value.schema
            _present("type", {"const": "json_schema"}),
            {
                "anyOf": [
                    _present("json_schema", _HOLDS_A_SCHEMA),
                    _present("value", _HOLDS_A_SCHEMA),
                ]
            },
        ),
    ],
}

REQUEST_DESCRIPTION = """\
A chat completion in either dialect (HF/TGI or OpenAI). Unknown fields are ignored; every
optional field may be null. Rules between fields, also in the schema (`allOf`):
`top_logprobs` > 0 needs `logprobs: true`; `tool_choice` `required` or a named function needs
`tools`; `response_format` `regex` needs the pattern as a string in `value`, and `json_schema`
needs the schema (`json_schema.schema`, or TGI's `value.schema`). Rules that depend on the
model or the server, answered with 400: the prompt plus `max_tokens` must fit the context;
`logit_bias` token ids must be in the vocabulary; `n` at most the server's `max_n` (see
`/info`); a `response_format` schema or pattern, and tool schemas, must compile to a grammar."""


def component_schemas() -> dict[str, Any]:
    modes = [(m, "validation" if m is ChatRequest else "serialization") for m in MODELS]
    _, top = models_json_schema(modes, ref_template=REF)
    schemas = top["$defs"]
    for name, rules in RULES.items():
        schemas[name]["allOf"] = [{"if": when, "then": then} for when, then in rules]
    schemas["ChatRequest"]["description"] = REQUEST_DESCRIPTION
    return schemas


# -- operations ---------------------------------------------------------------------------

ERRORS: dict[int, str] = {
    400: "An invalid request: the body, a field or a combination of fields (named in `error`)",
    401: "API keys are configured and the request carries none, or a wrong one",
    403: "The model may not be pulled from the Hub: outside --pull-allow, gated, or larger "
    "than --memory-budget",
    404: "No such model (here, in the local Hugging Face cache, or on the Hub)",
    408: "The body was not sent within --body-timeout",
    413: "The body is larger than --max-body-bytes",
    422: "The Hub repo holds no weights chatd can load",
    429: "Too many requests wait for this model (--max-queue): retry after `retry-after`",
    500: "A failed generation, or a bug",
    503: "The model is loading (`estimated_time`; `x-wait-for-model: true` waits instead), "
    "downloading, failed to load, there is no room for it, or the server is shutting down",
    504: "The answer ran past --request-timeout",
    507: "The model does not fit on the disk",
}


def _header(description: str, schema: dict[str, Any], required: bool = False) -> dict:
    return {"description": description, "required": required, "schema": schema}


_RETRY_AFTER = _header("seconds to wait before trying again", {"type": "integer", "minimum": 1})
ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"www-authenticate": _header("the scheme: Bearer", {"type": "string"}, required=True)},
    429: {"retry-after": {**_RETRY_AFTER, "required": True}},
    503: {
        "retry-after": _RETRY_AFTER,
        "x-should-retry": _header("false while loading: wait on purpose", {"type": "boolean"}),
    },
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _errors(statuses: tuple[int, ...]) -> dict[str, Any]:
    return {
        str(status): {
            "description": ERRORS[status],
            "content": _json(ref(ErrorBody)),
            **({"headers": ERROR_HEADERS[status]} if status in ERROR_HEADERS else {}),
        }
        for status in statuses
    }


def operation(
    ok: type[BaseModel] | dict[str, Any], description: str, *errors: int, public: bool = False
) -> dict[str, Any]:
    """A route's openapi_extra: its 200 (a model, as JSON, or content as given) and errors."""
    content = _json(ref(ok)) if isinstance(ok, type) else ok
    responses = {"200": {"description": description, "content": content}}
    if public:
        return {"responses": {**responses, **_errors(errors)}, "security": []}
    return {"responses": {**responses, **_errors((401, *errors))}}


# OpenAPI 3.1 has no item schema for a stream: `schema` describes each event (3.2's reading).
SSE_EVENT = {
    "description": "One server-sent event: a `chat.completion.chunk`, then `data: [DONE]` "
    "last. A stream that fails after its start ends with an error event instead.",
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "anyOf": [
                {"const": "[DONE]"},
                {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"anyOf": [ref(ChatCompletionChunk), ref(ErrorBody)]},
                },
            ]
        }
    },
}

_FLAG = {"type": "boolean"}
CHAT_HEADERS = [
    {
        "name": "x-use-cache",
        "in": "header",
        "required": False,
        "description": "false: skip the response cache (deterministic requests only use it)",
        "schema": _FLAG,
    },
    {
        "name": "x-wait-for-model",
        "in": "header",
        "required": False,
        "description": "true: wait while the model loads instead of a 503",
        "schema": _FLAG,
    },
]
MODEL_IN_PATH = [
    {
        "name": part,
        "in": "path",
        "required": True,
        "description": f"the model id's {part} (`{{org}}/{{name}}`): it wins over the body's",
        "schema": {"type": "string", "pattern": "^[^/]+$"},
    }
    for part in ("org", "name")
]


def chat_operation(model_in_path: bool) -> dict[str, Any]:
    answer = {
        "application/json": {"schema": ref(ChatCompletion)},
        "text/event-stream": {"schema": SSE_EVENT},
    }
    extra = operation(answer, "The answer: JSON, or an SSE stream for `stream: true`",
                      400, 403, 404, 408, 413, 422, 429, 500, 503, 504, 507)  # fmt: skip
    extra["responses"]["200"]["headers"] = {
        "x-cache": _header("hit or miss, for cacheable requests", {"enum": ["hit", "miss"]})
    }
    extra["parameters"] = [*(MODEL_IN_PATH if model_in_path else []), *CHAT_HEADERS]
    extra["requestBody"] = {
        "required": True,
        "description": "JSON, whatever the content-type says",
        "content": _json(ref(ChatRequest)),
    }
    return extra


def install(app: FastAPI) -> None:
    """app.openapi: FastAPI's document, the models' schemas and the bearer scheme added."""

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
            components = doc.setdefault("components", {})
            schemas = components.setdefault("schemas", {})
            for name, schema in component_schemas().items():
                if schemas.get(name, schema) != schema:
                    raise ValueError(f"two schemas named {name} in the OpenAPI document")
                schemas[name] = schema
            components["securitySchemes"] = {
                SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "needed once API keys are configured (--api-key)",
                }
            }
            # Either the key or nothing: with no keys configured, everything is open.
            doc["security"] = [{SECURITY_SCHEME: []}, {}]
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = document
