"""The published OpenAPI document: valid OpenAPI 3.1, its schemas agree with what chatd accepts
and sends, and schemathesis finds no 5xx and no response that the document does not describe
when it fuzzes a live chatd."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from openapi_spec_validator import validate
from pydantic import BaseModel, ValidationError
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from chatd.config import Settings
from chatd.models.registry import ModelState, Registry
from chatd.models.sources import ModelSource
from chatd.protocol.request import ChatRequest
from chatd.protocol.response import (
    ChatCompletion,
    ChatCompletionChunk,
    ErrorBody,
    Health,
    ModelCard,
    ModelList,
    ServerInfo,
)
from chatd.server.app import create_app
from tests.conftest import NO_END, Server

HI = [{"role": "user", "content": "Say hello."}]
CHAT = "/models/{org}/{name}/v1/chat/completions"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def _unstarted_app(folder, **settings):
    """An app that is never started: nothing is loaded to build its document."""
    settings = Settings(cache_url="off", **settings)
    return create_app(settings, Registry(settings, [ModelSource("test/none", folder / "x.gguf")]))


@pytest.fixture(scope="module")
def document(tmp_path_factory) -> dict:
    return _unstarted_app(tmp_path_factory.mktemp("none")).openapi()


def test_the_document_is_valid_openapi_3_1(document):
    validate(document)  # the spec's meta-schema, every $ref resolved, path parameters declared
    assert document["openapi"].startswith("3.1")
    assert "$defs" not in json.dumps(document)  # every schema is a component


def test_the_chat_route_declares_its_parameters_body_and_answers(document):
    operation = document["paths"][CHAT]["post"]
    in_path = {p["name"] for p in operation["parameters"] if p["in"] == "path"}
    assert in_path == {"org", "name"}
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatRequest"}
    answers = operation["responses"]
    assert set(answers["200"]["content"]) == {"application/json", "text/event-stream"}
    for status in ("400", "401", "404", "413", "429", "503", "504"):
        schema = answers[status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorBody"}, status
    assert answers["429"]["headers"]["retry-after"]["required"]


def test_every_route_but_the_public_ones_takes_the_bearer_key(document):
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    public = {path for path, ops in document["paths"].items() if ops["get" if "get" in ops
              else "post"].get("security") == []}  # fmt: skip
    assert public == {"/health", "/metrics"}
    assert {"/v1/models", "/info", "/v1/chat/completions"} <= set(document["paths"])


def test_a_401_is_the_documented_one(tmp_path, document):
    client = TestClient(_unstarted_app(tmp_path, api_keys=["sk-1"]))
    response = client.get("/v1/models")
    assert response.status_code == 401
    _conforms(ErrorBody, response.json())
    documented = document["paths"]["/v1/models"]["get"]["responses"]["401"]["headers"]
    assert set(documented) <= set(response.headers)
    assert client.get("/v1/models", headers={"authorization": "Bearer sk-1"}).status_code == 200


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"top_logprobs": 3},
        {"top_logprobs": 3, "logprobs": True},
        {"top_logprobs": 0},
        {"top_logprobs": 2, "logprobs": False},
        {"tool_choice": "required"},
        {"tool_choice": "required", "tools": []},
        {"tool_choice": "required", "tools": [WEATHER]},
        {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
        {"tool_choice": "auto"},
        {"response_format": {"type": "regex", "value": "[0-9]+"}},
        {"response_format": {"type": "regex"}},
        {"response_format": {"type": "regex", "value": {"pattern": "x"}}},
        {"response_format": {"type": "json_schema"}},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
        {"response_format": {"type": "json_schema", "value": {"name": "x", "schema": {}}}},
        {"response_format": {"type": "json_object"}},
        {"messages": []},
        {"temperature": 2.5},
        {"stop": ["a", "b", "c", "d", "e"]},
    ],
)
def test_the_request_schema_accepts_what_chatd_accepts(document, fields):
    """The schema's cross-field rules and bounds agree with the validation chatd runs (the
    five-stop rule is the one the schema leaves to the description)."""
    body = {"messages": HI, **fields}
    schema = {"$ref": "#/components/schemas/ChatRequest", "components": document["components"]}
    by_schema = jsonschema.Draft202012Validator(schema).is_valid(body)
    try:
        ChatRequest.model_validate(body)
        structured = _grammar_accepts(body)
    except ValidationError:
        structured = False
    if "stop" in fields:
        assert by_schema and not structured
    else:
        assert by_schema == structured, body


def _grammar_accepts(body: dict) -> bool:
    """response_format's rules live in chat/structured.py (a 400 before anything runs)."""
    from chatd.chat.structured import response_format_grammar
    from chatd.engine.constraints import GrammarError

    try:
        response_format_grammar(ChatRequest.model_validate(body).response_format)
    except GrammarError:
        return False
    return True


def test_the_model_states_are_the_registrys():
    assert set(ModelCard.model_fields["state"].annotation.__args__) == {s.value for s in ModelState}


# -- against a live chatd -------------------------------------------------------------------


@pytest.fixture(scope="module")
def chatd():
    with Server("--parallel", "2", "--ctx", "512", "--cache-url", "off") as srv:
        srv.wait_ready()
        yield srv


def _conforms(model: type[BaseModel], data: dict) -> None:
    model.model_validate(data)  # extra="forbid": a field on one side only fails here


def _post(url: str, **body) -> httpx.Response:
    body.setdefault("messages", HI)
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


def _events(url: str, **body) -> list[str]:
    body.setdefault("messages", HI)
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True},
                      timeout=120) as r:  # fmt: skip
        assert r.status_code == 200
        raw = r.read().decode()
    return [e.removeprefix("data: ") for e in raw.split("\n\n") if e]


@pytest.mark.parametrize(
    "fields",
    [
        {"max_tokens": 3},
        {"max_tokens": 3, "n": 2, "logprobs": True, "top_logprobs": 2, "logit_bias": NO_END},
        {
            "max_tokens": 60,
            "temperature": 0,
            "tools": [WEATHER],
            "tool_choice": "required",
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        },  # fmt: skip
    ],
    ids=["plain", "n_logprobs", "tool_call"],
)
def test_real_answers_match_the_response_models(chatd, fields):
    r = _post(chatd.url, **fields)
    assert r.status_code == 200, r.text
    _conforms(ChatCompletion, r.json())
    if "tools" in fields:
        assert r.json()["choices"][0]["message"]["tool_calls"]
    events = _events(chatd.url, **fields, stream_options={"include_usage": True})
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        _conforms(ChatCompletionChunk, chunk)
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    if "tools" in fields:
        assert any(c["choices"] and "tool_calls" in c["choices"][0]["delta"] for c in chunks)


def test_real_errors_and_service_routes_match_the_models(chatd):
    for response in (
        _post(chatd.url, temperature=9),
        _post(chatd.url, model="no-such/model"),
        httpx.get(f"{chatd.url}/nothing-here"),
    ):
        assert response.status_code in (400, 404), response.text
        _conforms(ErrorBody, response.json())
    for path, model in (("/health", Health), ("/v1/models", ModelList), ("/info", ServerInfo)):
        _conforms(model, httpx.get(f"{chatd.url}{path}").json())


# schemathesis: every documented operation, with the checks that compare a response with the
# document, and max_tokens and n capped so that each generation stays short.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
CAPS = {"max_tokens": 4, "max_completion_tokens": 4, "n": 2}
# Every documented operation, with how many examples of each mode to try.
FUZZED = {
    ("POST", "/v1/chat/completions"): 50,
    ("POST", "/chat/completions"): 10,
    ("POST", CHAT): 10,
    ("GET", "/health"): 2,
    ("GET", "/v1/models"): 2,
    ("GET", "/info"): 2,
    ("GET", "/metrics"): 2,
}


def test_every_operation_is_fuzzed(document):
    documented = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
    assert documented == set(FUZZED)


@pytest.fixture(scope="module")
def api_schema(chatd):
    # "max_tokens" looks like a secret to schemathesis: show it in the curl of a failure
    config = schemathesis.Config.from_dict({"output": {"sanitization": {"enabled": False}}})
    return schemathesis.openapi.from_url(f"{chatd.url}/openapi.json", config=config)


def _cap(body) -> None:
    if not isinstance(body, dict):
        return
    for field, cap in CAPS.items():
        value = body.get(field)
        # a float counts too: 14706.0 is an integer to pydantic
        if isinstance(value, int | float) and not isinstance(value, bool) and value > cap:
            body[field] = cap
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = CAPS["max_tokens"]


# Valid data for every operation; invalid data too for those that take a body.
RUNS = [(m, p, GenerationMode.POSITIVE) for m, p in FUZZED]
RUNS += [(m, p, GenerationMode.NEGATIVE) for m, p in FUZZED if m == "POST"]


@pytest.mark.parametrize(("method", "path", "mode"), RUNS)
def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(
    api_schema, method, path, mode
):
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(mode))
    @settings(
        max_examples=FUZZED[method, path],
        deadline=None,
        derandomize=True,  # the same examples on every run: a failure in CI is a real one
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],  # shrinking a slow server takes too long
    )
    def fuzz(case) -> None:
        _cap(case.body)
        case.call_and_validate(checks=CHECKS, timeout=60)

    fuzz()
