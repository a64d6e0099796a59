# ruff: noqa: E501  (tool definitions and histories read best one item a line)
"""Tool calling on Qwen2.5-Coder-0.5B (native template) and SmolLM2 (tool_prompt fallback)."""

from __future__ import annotations

import json

import httpx
import huggingface_hub
import jsonschema
import openai
import pytest

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Get the local time in a city", "parameters": TIME}},
]  # fmt: skip
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather like in Paris?"}]
CHAT = [{"role": "user", "content": "Say hello to me."}]


def assert_valid_calls(calls, names=None) -> None:
    assert calls
    for call in calls:
        assert call["type"] == "function" and call["id"].startswith("call_")
        name = call["function"]["name"]
        assert name in (names or SCHEMAS)
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[name])


def post(url: str, **body) -> dict:
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_auto_calls_a_tool_with_valid_arguments(qwen_url):
    body = post(qwen_url, messages=ASK, tools=TOOLS, max_tokens=80, temperature=0)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert_valid_calls(choice["message"]["tool_calls"], {"get_weather"})


def test_openai_client_parses_the_call_strictly(qwen_url):
    client = openai.OpenAI(base_url=f"{qwen_url}/v1", api_key="x", _strict_response_validation=True)
    out = client.chat.completions.create(
        model="dummy", messages=ASK, tools=TOOLS, tool_choice="auto", max_tokens=80, temperature=0
    )
    call = out.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] == "Paris"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_required_always_calls_even_for_small_talk(qwen_url, seed):
    body = post(
        qwen_url, messages=CHAT, tools=TOOLS, tool_choice="required", max_tokens=80,
        temperature=1.0, seed=seed,
    )  # fmt: skip
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert_valid_calls(body["choices"][0]["message"]["tool_calls"])


@pytest.mark.parametrize(
    "choice",
    [{"function": {"name": "get_time"}}, {"type": "function", "function": {"name": "get_time"}}],
    ids=["hf", "openai"],
)
def test_named_tool_is_the_one_called(qwen_url, choice):
    body = post(qwen_url, messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=80)
    calls = body["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_time"]
    assert_valid_calls(calls)


def test_none_ignores_the_tools(qwen_url):
    body = post(
        qwen_url, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=30, temperature=0
    )
    message = body["choices"][0]["message"]
    assert "tool_calls" not in message and message["content"]


def test_tgi_arguments_key_for_the_schema(qwen_url):
    tools = [{"type": "function", "function": {"name": "get_weather", "arguments": WEATHER}}]
    body = post(qwen_url, messages=ASK, tools=tools, tool_choice="required", max_tokens=80)
    assert_valid_calls(body["choices"][0]["message"]["tool_calls"], {"get_weather"})


def test_streamed_call_fragments(qwen_url):
    client = openai.OpenAI(base_url=f"{qwen_url}/v1", api_key="x", _strict_response_validation=True)
    chunks = list(
        client.chat.completions.create(
            model="dummy", messages=ASK, tools=TOOLS, max_tokens=80, temperature=0, stream=True
        )
    )
    fragments = [
        tc
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
        for tc in c.choices[0].delta.tool_calls
    ]
    assert fragments[0].id and fragments[0].type == "function" and fragments[0].function.name
    assert all(f.id is None and f.type is None and f.function.name is None for f in fragments[1:])
    assert all(f.index == 0 for f in fragments)
    arguments = "".join(f.function.arguments or "" for f in fragments)
    jsonschema.validate(json.loads(arguments), WEATHER)
    assert len(fragments) > 2  # the arguments arrive in pieces
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_openai_stream_helper_accumulates_one_call(qwen_url):
    client = openai.OpenAI(base_url=f"{qwen_url}/v1", api_key="x")
    with client.chat.completions.stream(
        model="dummy", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=80
    ) as stream:
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert call.type == "function"
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_hf_client_stream_and_non_stream(qwen_url):
    client = huggingface_hub.InferenceClient(base_url=f"{qwen_url}/v1/")
    out = client.chat_completion(ASK, tools=TOOLS, tool_choice="required", max_tokens=80)
    call = out.choices[0].message.tool_calls[0]
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    args = ""
    for chunk in client.chat_completion(
        ASK, tools=TOOLS, max_tokens=80, stream=True, temperature=0
    ):
        for tc in chunk.choices[0].delta.tool_calls or []:
            args += tc.function.arguments or ""
    jsonschema.validate(json.loads(args), WEATHER)


def test_tool_results_in_history_reach_the_model(qwen_url):
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "It is sunny and 22 degrees Celsius."},
        {"role": "user", "content": "So, how warm is it in Paris?"},
    ]  # fmt: skip
    body = post(
        qwen_url, messages=history, tools=TOOLS, tool_choice="none", max_tokens=40, temperature=0
    )
    assert "22" in body["choices"][0]["message"]["content"]


def test_fallback_template_gets_tool_prompt_and_still_calls(base_url):
    # SmolLM2's template knows no tools: they go into the system turn, the grammar does the rest.
    for prompt in (None, "Tools you may use:\n"):
        body = post(
            base_url, messages=ASK, tools=TOOLS, tool_choice="required", tool_prompt=prompt,
            max_tokens=80, temperature=0,
        )  # fmt: skip
        assert_valid_calls(body["choices"][0]["message"]["tool_calls"])
    with_tools = post(base_url, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=5)
    without = post(base_url, messages=ASK, max_tokens=5)
    assert with_tools["usage"]["prompt_tokens"] > without["usage"]["prompt_tokens"] + 50


@pytest.mark.parametrize(
    "extra, words",
    [
        ({"tool_choice": {"function": {"name": "nope"}}}, ["tool_choice", "nope"]),
        ({"response_format": {"type": "json_object"}}, ["response_format", "tools"]),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"$ref": "#/x"}}}}}]}, ["tools", "/x"]),
    ],
)  # fmt: skip
def test_tool_errors_are_400(base_url, extra, words):
    body = {"messages": ASK, "tools": TOOLS, **extra}
    r = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    for word in words:
        assert word in r.json()["error"]


# Qwen2.5's token ids: its native call marker, and the other starts of a call: a bare `{`, and
# a fence, ``` then json.
QWEN_TOOL_CALL, QWEN_BRACE, QWEN_FENCE, QWEN_JSON = 151657, 90, 73594, 2236


def test_auto_answers_in_text_when_the_model_writes_text(qwen_url):
    haiku = [{"role": "user", "content": "Write a haiku about the sea."}]
    body = post(
        qwen_url, messages=haiku, tools=TOOLS, max_tokens=30, temperature=0,
        logit_bias={str(t): -100 for t in (QWEN_TOOL_CALL, QWEN_BRACE, QWEN_FENCE)},
    )  # fmt: skip
    choice = body["choices"][0]
    assert choice["finish_reason"] in ("stop", "length")
    assert "tool_calls" not in choice["message"] and choice["message"]["content"].strip()


# Arguments with no free text, where the bias could put its tokens.
ENUM_WEATHER = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Rome"]}},
    "required": ["city"],
    "additionalProperties": False,
}
ENUM_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": ENUM_WEATHER}}]


@pytest.mark.parametrize(
    "start", [(QWEN_BRACE,), (QWEN_FENCE, QWEN_JSON)], ids=["brace", "json_fence"]
)
def test_auto_answer_that_starts_like_a_call_is_held_to_the_grammar(qwen_url, start):
    """For small talk the bias makes the answer start like a call (and favours those tokens
    wherever the grammar allows them, arguments included): what follows is a valid call."""
    bias = {str(t): 100 for t in start} | {str(QWEN_TOOL_CALL): -100}
    body = post(
        qwen_url, messages=CHAT, tools=ENUM_TOOLS, max_tokens=120, temperature=0, logit_bias=bias
    )
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), ENUM_WEATHER)
