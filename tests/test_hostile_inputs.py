"""A table of hostile and odd request bodies against the real server: each gets the status its
row names (a 4xx always with the HF body), never a 5xx, and the server answers right after.

Every numeric field is tried at and past its bounds, as a huge and a negative number and as
the wrong type; then whole bodies, messages, content parts, tools, tool histories, formats.
A row that lists two statuses accepts either (lax type coercion is pydantic's to decide).
"""

from __future__ import annotations

import httpx
import pytest

OK, BAD = {200}, {400}
EITHER = {200, 400}
USER = [{"role": "user", "content": "Hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}

# field: (lowest allowed, highest allowed, integer?) — from protocol/request.py and --max-n.
BOUNDS = {
    "max_tokens": (1, None, True),
    "max_completion_tokens": (1, None, True),
    "temperature": (0, 2, False),
    "top_p": (1e-9, 1, False),
    "top_k": (0, None, True),
    "min_p": (0, 1, False),
    "frequency_penalty": (-2, 2, False),
    "presence_penalty": (-2, 2, False),
    "repetition_penalty": (1e-300, None, False),
    "seed": (-(2**63), 2**64 - 1, True),  # int64, and uint64 as the same seeds mod 2**64
    "n": (1, 16, True),
    "top_logprobs": (0, 20, True),
}


def numeric_rows() -> list[tuple[str, dict, set[int]]]:
    rows = []
    for field, (low, high, integer) in BOUNDS.items():
        extra = {"logprobs": True} if field == "top_logprobs" else {}
        step = 1 if integer else (1e-3 if low and abs(low) < 1 else 0.5)
        cases = [("at-min", low, OK), ("below-min", low - step if low else -1, BAD)]
        if high is not None:
            cases += [("at-max", high, OK), ("past-max", high + (1 if integer else 0.5), BAD)]
        cases += [
            ("huge", 10**30 if integer else 1e300, OK if high is None else BAD),
            ("very-negative", -(10**30) if integer else -1e300, BAD),
            ("string", "1", EITHER),
            ("word", "many", BAD),
            ("bool", True, EITHER),
            ("list", [1], BAD),
            ("object", {"v": 1}, BAD),
            ("null", None, OK),
        ]
        if integer:
            cases.append(("fraction", 1.5, BAD))
        for name, value, expected in cases:
            if field == "top_k" and name == "huge":
                expected = OK  # no upper bound: every id past the vocabulary is simply kept
            rows.append((f"{field}-{name}", {field: value, **extra}, expected))
    return rows


BODY_ROWS: list[tuple[str, object, set[int]]] = [
    ("body-null", None, BAD),
    ("body-list", [], BAD),
    ("body-string", "hi", BAD),
    ("body-number", 7, BAD),
    ("body-empty-object", {}, BAD),
    ("messages-empty", {"messages": []}, BAD),
    ("messages-object", {"messages": {"role": "user"}}, BAD),
    ("message-not-object", {"messages": ["hi"]}, BAD),
    ("role-unknown", {"messages": [{"role": "wizard", "content": "Hi"}]}, BAD),
    ("role-missing", {"messages": [{"content": "Hi"}]}, BAD),
    ("role-number", {"messages": [{"role": 1, "content": "Hi"}]}, BAD),
    ("content-number", {"messages": [{"role": "user", "content": 5}]}, BAD),
    ("content-object", {"messages": [{"role": "user", "content": {"text": "x"}}]}, BAD),
    ("part-unknown-type", {"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, BAD),
    ("part-no-type", {"messages": [{"role": "user", "content": [{"text": "x"}]}]}, BAD),
    ("text-part-no-text", {"messages": [{"role": "user", "content": [{"type": "text"}]}]}, BAD),
    (
        "image-part-no-url",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        BAD,
    ),
    (
        "image-on-a-text-model",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
                    ],
                }
            ]
        },
        BAD,
    ),  # fmt: skip
    ("content-oversize", {"messages": [{"role": "user", "content": "word " * 400_000}]}, BAD),
    ("model-oversize", {"model": "m" * 50_000, "messages": USER}, {404}),
    ("model-number", {"model": 5, "messages": USER}, BAD),
    ("stream-string", {"messages": USER, "stream": "maybe"}, BAD),
    ("stream-options-list", {"messages": USER, "stream_options": [1]}, BAD),
    ("stop-five", {"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, BAD),
    ("stop-number", {"messages": USER, "stop": 5}, BAD),
    ("stop-list-of-numbers", {"messages": USER, "stop": [1, 2]}, BAD),
    ("stop-long", {"messages": USER, "stop": "x" * 10_000}, OK),
    ("logit-bias-outside-vocabulary", {"messages": USER, "logit_bias": {"-1": 5}}, BAD),
    ("logit-bias-key-not-a-number", {"messages": USER, "logit_bias": {"abc": 5}}, BAD),
    ("logit-bias-huge-value", {"messages": USER, "logit_bias": {"1": 1e300}}, OK),
    ("logit-bias-past-vocabulary", {"messages": USER, "logit_bias": {"100000000": 1}}, BAD),
    ("logit-bias-string", {"messages": USER, "logit_bias": "x"}, BAD),
    ("top-logprobs-without-logprobs", {"messages": USER, "top_logprobs": 3}, BAD),
    ("response-format-unknown", {"messages": USER, "response_format": {"type": "xml"}}, BAD),
    ("regex-without-pattern", {"messages": USER, "response_format": {"type": "regex"}}, BAD),
    (
        "regex-unbalanced",
        {"messages": USER, "response_format": {"type": "regex", "value": "("}},
        BAD,
    ),
    (
        "json-schema-number",
        {"messages": USER, "response_format": {"type": "json", "value": 5}},
        BAD,
    ),
    (
        "json-schema-not-json",
        {"messages": USER, "response_format": {"type": "json", "value": "{not json"}},
        BAD,
    ),
    (
        "json-schema-bad-type",
        {"messages": USER, "response_format": {"type": "json", "value": {"type": "nonsense"}}},
        BAD,
    ),
    ("json-schema-missing", {"messages": USER, "response_format": {"type": "json_schema"}}, BAD),
    ("tools-not-list", {"messages": USER, "tools": {"a": 1}}, BAD),
    ("tool-without-function", {"messages": USER, "tools": [{"type": "function"}]}, BAD),
    (
        "tool-without-name",
        {"messages": USER, "tools": [{"type": "function", "function": {"parameters": {}}}]},
        BAD,
    ),
    (
        "tool-name-empty",
        {"messages": USER, "tools": [{"function": {"name": "", "parameters": {}}}]},
        BAD,
    ),
    (
        "tool-name-with-spaces",
        {"messages": USER, "tools": [{"function": {"name": "a b", "parameters": {}}}]},
        BAD,
    ),
    (
        "tool-parameters-list",
        {"messages": USER, "tools": [{"function": {"name": "f", "parameters": [1]}}]},
        BAD,
    ),
    (
        "tool-schema-unusable",
        {
            "messages": USER,
            "tool_choice": "required",
            "tools": [{"function": {"name": "f", "parameters": {"type": "nonsense"}}}],
        },
        BAD,
    ),  # fmt: skip
    ("tool-choice-unknown-word", {"messages": USER, "tools": [TOOL], "tool_choice": "x"}, BAD),
    (
        "tool-choice-unknown-tool",
        {"messages": USER, "tools": [TOOL], "tool_choice": {"function": {"name": "g"}}},
        BAD,
    ),
    ("tool-choice-required-no-tools", {"messages": USER, "tool_choice": "required"}, BAD),
    ("tools-empty-auto", {"messages": USER, "tools": [], "tool_choice": "auto"}, OK),
    (
        "tool-call-arguments-not-json",
        {
            "messages": [
                *USER,
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{oops"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "1", "content": "done"},
            ]
        },
        EITHER,
    ),  # fmt: skip
    (
        "tool-call-without-function",
        {"messages": [*USER, {"role": "assistant", "tool_calls": [{"id": "1"}]}]},
        BAD,
    ),
    (
        "tool-answer-for-no-call",
        {"messages": [*USER, {"role": "tool", "tool_call_id": "nope", "content": "x"}]},
        EITHER,
    ),
    ("tool-message-content-number", {"messages": [{"role": "tool", "content": 3}]}, BAD),
    ("name-number", {"messages": [{"role": "user", "content": "Hi", "name": 3}]}, BAD),
]


ROWS = [(name, {"messages": USER, **extra}, want) for name, extra, want in numeric_rows()]
ROWS += BODY_ROWS


def test_the_table_is_large_enough():
    assert len(ROWS) >= 100


@pytest.mark.parametrize(("body", "expected"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_hostile_body(base_url, body, expected):
    if isinstance(body, dict):  # generation stays short whatever a row sets max_tokens to
        body = {"max_tokens": 1, **body}
        limit = body["max_tokens"]
        if isinstance(limit, int) and limit > 1 and "max_completion_tokens" not in body:
            body["max_completion_tokens"] = 1
    r = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code < 500, r.text
    assert r.status_code in expected, r.text
    if r.status_code >= 400:
        answer = r.json()
        assert isinstance(answer["error"], str) and answer["error"]
        assert isinstance(answer["error_type"], str) and "detail" not in answer
    assert httpx.get(f"{base_url}/health", timeout=10).status_code == 200
