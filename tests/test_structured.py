# ruff: noqa: E501  (the schema table reads best one schema a line)
"""response_format in all six shapes: every answer validates against its schema or fully
matches its pattern, streamed or not, with n > 1, through both clients."""

from __future__ import annotations

import json
import re

import httpx
import huggingface_hub
import jsonschema
import pytest

from tests.conftest import chat

NAME = {"type": "string", "minLength": 1, "maxLength": 20}
# A small model sampling freely can write digits for ever: give numbers the bounds real
# schemas have (an unbounded one that runs on ends with finish_reason "length").
INT = {"type": "integer", "minimum": -1000, "maximum": 1000}
OBJ = {"type": "object", "additionalProperties": False}

SCHEMAS = {
    "flat": {**OBJ, "properties": {"name": NAME, "age": INT}, "required": ["name", "age"]},
    "bounded_number": {**OBJ, "properties": {"score": {"type": "number", "minimum": 0, "maximum": 10, "multipleOf": 0.5}}, "required": ["score"]},
    "exclusive_bounds": {**OBJ, "properties": {"n": {"type": "integer", "exclusiveMinimum": 5, "exclusiveMaximum": 9}}, "required": ["n"]},
    "enum": {**OBJ, "properties": {"colour": {"enum": ["red", "green", "blue"]}}, "required": ["colour"]},
    "const": {**OBJ, "properties": {"kind": {"const": "cat"}, "lives": {"type": "integer", "minimum": 1, "maximum": 9}}, "required": ["kind", "lives"]},
    "boolean_and_null": {**OBJ, "properties": {"ok": {"type": "boolean"}, "note": {"type": "null"}}, "required": ["ok", "note"]},
    "optional_field": {**OBJ, "properties": {"title": NAME, "subtitle": NAME}, "required": ["title"]},
    "nested": {**OBJ, "properties": {"person": {**OBJ, "properties": {"name": NAME, "address": {**OBJ, "properties": {"city": NAME, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}, "required": ["city", "zip"]}}, "required": ["name", "address"]}}, "required": ["person"]},
    "array_bounds": {**OBJ, "properties": {"tags": {"type": "array", "items": NAME, "minItems": 2, "maxItems": 3}}, "required": ["tags"]},
    "array_of_objects": {**OBJ, "properties": {"items": {"type": "array", "maxItems": 2, "items": {**OBJ, "properties": {"id": INT, "label": NAME}, "required": ["id", "label"]}}}, "required": ["items"]},
    "unique_small_ints": {**OBJ, "properties": {"digits": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 1, "maxItems": 4}}, "required": ["digits"]},
    "any_of": {**OBJ, "properties": {"value": {"anyOf": [INT, {"type": "string", "maxLength": 10}]}}, "required": ["value"]},
    "one_of_objects": {"oneOf": [{**OBJ, "properties": {"cat": NAME}, "required": ["cat"]}, {**OBJ, "properties": {"dog": INT}, "required": ["dog"]}]},
    "pattern": {**OBJ, "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"}}, "required": ["code"]},
    "format_date": {**OBJ, "properties": {"day": {"type": "string", "format": "date"}}, "required": ["day"]},
    "format_email": {**OBJ, "properties": {"email": {"type": "string", "format": "email", "maxLength": 40}}, "required": ["email"]},
    "string_length": {**OBJ, "properties": {"word": {"type": "string", "minLength": 3, "maxLength": 5}}, "required": ["word"]},
    "ref_defs": {"$defs": {"point": {**OBJ, "properties": {"x": INT, "y": INT}, "required": ["x", "y"]}}, **OBJ, "properties": {"a": {"$ref": "#/$defs/point"}, "b": {"$ref": "#/$defs/point"}}, "required": ["a", "b"]},
    "top_level_array": {"type": "array", "items": INT, "minItems": 1, "maxItems": 3},
    "nullable": {**OBJ, "properties": {"middle_name": {"type": ["string", "null"], "maxLength": 10}}, "required": ["middle_name"]},
    "integer_multiple": {**OBJ, "properties": {"even": {"type": "integer", "multipleOf": 2, "minimum": 0, "maximum": 100}}, "required": ["even"]},
    "all_of": {"allOf": [{**OBJ, "properties": {"a": INT, "b": NAME}, "required": ["a"]}, {"required": ["b"]}]},
}  # fmt: skip

PROMPT = [{"role": "user", "content": "Describe a person, a pet or a place as JSON."}]
FORMAT_CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER


def assert_valid(text: str, schema: dict) -> None:
    jsonschema.validate(json.loads(text), schema, format_checker=FORMAT_CHECKER)


def assert_finished_and_valid(text: str, finish_reason: str, schema: dict) -> None:
    """A sampled answer is steered to a valid end before max_tokens runs out
    (engine/closing.py): it ends with "stop" and validates."""
    assert finish_reason == "stop", (finish_reason, text)
    assert_valid(text, schema)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_openai_json_schema_output_validates(openai_client, name):
    schema = SCHEMAS[name]
    out = openai_client.chat.completions.create(
        model="dummy", messages=PROMPT, max_tokens=200, temperature=0.7, seed=len(name),
        response_format={"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}},
    )  # fmt: skip
    choice = out.choices[0]
    assert_finished_and_valid(choice.message.content, choice.finish_reason, schema)


@pytest.mark.parametrize("name", ["nested", "ref_defs", "array_of_objects", "enum"])
def test_hf_client_json_schema_streamed_validates(hf_client, name):
    # InferenceClient 2.x rewrites json_schema into {"type": "json_object", "value": schema}.
    schema = SCHEMAS[name]
    stream = hf_client.chat_completion(
        PROMPT, max_tokens=200, stream=True, seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": name, "schema": schema}},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert_finished_and_valid(text, chunks[-1].choices[0].finish_reason, schema)


def test_hf_json_shape_with_schema_as_value_and_n_choices(base_url):
    schema = SCHEMAS["flat"]
    body = chat(
        base_url, messages=PROMPT, max_tokens=120, n=3, temperature=1.0, seed=5,
        response_format={"type": "json", "value": schema},
    ).json()  # fmt: skip
    assert len(body["choices"]) == 3
    for choice in body["choices"]:
        assert_finished_and_valid(choice["message"]["content"], choice["finish_reason"], schema)


def test_hf_schema_given_as_a_json_string(base_url):
    schema = SCHEMAS["enum"]
    body = chat(
        base_url, messages=PROMPT, max_tokens=60,
        response_format={"type": "json", "value": json.dumps(schema)},
    ).json()  # fmt: skip
    assert_valid(body["choices"][0]["message"]["content"], schema)


def test_json_object_without_schema_is_any_object(openai_client):
    out = openai_client.chat.completions.create(
        model="dummy", messages=PROMPT, max_tokens=300, temperature=0,
        response_format={"type": "json_object"},
    )  # fmt: skip
    choice = out.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(json.loads(choice.message.content), dict)


def test_text_format_is_unconstrained(base_url):
    free = chat(base_url, messages=PROMPT, max_tokens=20, temperature=0).json()
    text = chat(
        base_url, messages=PROMPT, max_tokens=20, temperature=0, response_format={"type": "text"}
    ).json()
    assert free["choices"][0]["message"] == text["choices"][0]["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_schema_whose_shortest_answer_does_not_fit_is_a_400(base_url, stream):
    r = chat(
        base_url, messages=PROMPT, max_tokens=3, stream=stream,
        response_format={"type": "json", "value": SCHEMAS["nested"]},
    )  # fmt: skip
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith("response_format: no valid answer fits in max_tokens (3)")


REGEXES = [
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}",
    r"(yes|no)",
    r"[A-Z][a-z]{2,8} [A-Z][a-z]{2,8}",
    r"\+?[0-9]{2,3} [0-9]{3} [0-9]{4}",
    r"#[0-9a-f]{6}",
]


@pytest.mark.parametrize("pattern", REGEXES)
@pytest.mark.parametrize("stream", [False, True])
def test_regex_output_fully_matches(openai_client, pattern, stream):
    kwargs = dict(
        model="dummy", messages=[{"role": "user", "content": "Answer briefly."}], max_tokens=40,
        temperature=0.8, seed=9, extra_body={"response_format": {"type": "regex", "value": pattern}},
    )  # fmt: skip
    if stream:
        text = "".join(
            c.choices[0].delta.content or ""
            for c in openai_client.chat.completions.create(stream=True, **kwargs)
            if c.choices
        )
    else:
        text = openai_client.chat.completions.create(**kwargs).choices[0].message.content
    assert re.fullmatch(pattern, text), text


@pytest.mark.parametrize(
    "fmt, words",
    [
        ({"type": "regex", "value": "[0-9"}, ["regex", "unclosed character class"]),
        ({"type": "regex"}, ["regex", "value"]),
        ({"type": "json", "value": {"type": "object", "properties": {"a": {"$ref": "#/nope"}}}}, ["/nope"]),
        ({"type": "json", "value": "{not json"}, ["not valid JSON"]),
        ({"type": "json", "value": [1, 2]}, ["must be an object"]),
        ({"type": "json", "value": {"type": "object", "minProperties": 3, "maxProperties": 1}}, ["response_format"]),
        ({"type": "xml"}, ["response_format.type"]),
    ],
)  # fmt: skip
def test_bad_schema_or_pattern_is_400_saying_what(base_url, fmt, words):
    r = chat(base_url, response_format=fmt)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error_type"] == "validation"
    for word in words:
        assert word in body["error"], body["error"]


def test_bad_schema_raises_bad_request_in_hf_client(hf_client):
    with pytest.raises(huggingface_hub.errors.BadRequestError, match="response_format"):
        hf_client.chat_completion(PROMPT, response_format={"type": "regex", "value": "(("})


def test_grammar_masks_do_not_harm_free_requests_beside_them(base_url):
    free = chat(base_url, messages=PROMPT, max_tokens=30, temperature=0).json()
    with httpx.Client(timeout=120) as client:
        import concurrent.futures as cf

        with cf.ThreadPoolExecutor(4) as pool:
            jobs = [
                pool.submit(
                    client.post, f"{base_url}/v1/chat/completions",
                    json={"messages": PROMPT, "max_tokens": 60, "response_format": {"type": "json", "value": SCHEMAS["flat"]}},
                )
                for _ in range(3)
            ] + [pool.submit(client.post, f"{base_url}/v1/chat/completions", json={"messages": PROMPT, "max_tokens": 30, "temperature": 0})]  # fmt: skip
            results = [j.result().json() for j in jobs]
    assert results[-1]["choices"][0]["message"] == free["choices"][0]["message"]
    for r in results[:3]:
        choice = r["choices"][0]
        assert_finished_and_valid(
            choice["message"]["content"], choice["finish_reason"], SCHEMAS["flat"]
        )


def test_logprobs_under_a_grammar_are_finite_json(openai_client):
    out = openai_client.chat.completions.create(
        model="dummy", messages=PROMPT, max_tokens=12, logprobs=True, top_logprobs=20,
        extra_body={"response_format": {"type": "regex", "value": "(yes|no)"}},
    )  # fmt: skip
    content = out.choices[0].logprobs.content
    assert "".join(t.token for t in content) == out.choices[0].message.content
    # Only "yes"/"no" prefixes are allowed first: fewer than 20 alternatives, none -inf.
    assert 0 < len(content[0].top_logprobs) < 20
    assert all(t.logprob > -1e30 for t in content[0].top_logprobs)
