"""Bad input gets a clear 4xx with the HF body; both clients raise their own exceptions."""

from __future__ import annotations

import httpx
import huggingface_hub
import openai
import pytest

from tests.conftest import CTX, chat

HI = [{"role": "user", "content": "Say hello."}]


def assert_hf_error(r: httpx.Response, status: int, *words: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) >= {"error", "error_type"} and "detail" not in body
    for word in words:
        assert word in body["error"], body
    assert int(r.headers["content-length"]) == len(r.content)
    return body["error"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"logprobs": False, "top_logprobs": 2}, "top_logprobs"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"logit_bias": {"999999": 5}}, "logit_bias"),
        ({"n": 99}, "n"),
        ({"frequency_penalty": 9}, "frequency_penalty"),
    ],
)
def test_bad_field_is_400_naming_it(base_url, body, field):
    assert_hf_error(chat(base_url, **body), 400, field)


def test_not_json_is_400(base_url):
    r = httpx.post(f"{base_url}/v1/chat/completions", content=b"{nope", timeout=30)
    assert_hf_error(r, 400, "JSON")


def test_explicit_nulls_and_unknown_fields_are_accepted(base_url):
    nulls = dict.fromkeys(
        ["model", "stream", "stream_options", "max_tokens", "temperature", "top_p", "seed", "stop",
         "n", "logprobs", "top_logprobs", "logit_bias", "response_format", "tools", "tool_choice",
         "tool_prompt", "frequency_penalty", "presence_penalty", "max_completion_tokens"]
    )  # fmt: skip
    r = chat(base_url, **nulls, user="someone", parallel_tool_calls=True, whatever={"x": 1})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["role"] == "assistant"


def test_prompt_longer_than_context_is_400_with_lengths(base_url):
    long = [{"role": "user", "content": "word " * (CTX + 50)}]
    message = assert_hf_error(chat(base_url, messages=long), 400, str(CTX))
    assert "tokens long" in message


def test_unknown_model_is_404_for_both_clients(base_url, openai_client):
    assert_hf_error(chat(base_url, model="nobody/nothing"), 404, "nobody/nothing")
    with pytest.raises(openai.NotFoundError):
        openai_client.chat.completions.create(model="nobody/nothing", messages=HI)
    hf = huggingface_hub.InferenceClient(base_url=f"{base_url}/v1/")
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError) as raised:
        hf.chat_completion(HI, model="nobody/nothing")
    assert raised.value.response.status_code == 404


def test_model_in_path_wins_over_body(base_url):
    r = httpx.post(
        f"{base_url}/models/nobody/nothing/v1/chat/completions",
        json={"messages": HI, "model": "dummy"},
        timeout=30,
    )
    assert_hf_error(r, 404, "nobody/nothing")


def test_validation_errors_raise_each_clients_bad_request(base_url, openai_client, hf_client):
    with pytest.raises(openai.BadRequestError) as raised:
        openai_client.chat.completions.create(model="dummy", messages=HI, temperature=5)
    assert "temperature" in raised.value.body
    with pytest.raises(huggingface_hub.errors.BadRequestError) as hf_raised:
        hf_client.chat_completion(HI, temperature=5)
    assert "temperature" in hf_raised.value.server_message


def test_unknown_content_part_type_is_400(base_url):
    # Refused by validation, before any template runs; a template's own refusal is tested in
    # test_transformers_text.py (a model whose template raises).
    r = chat(base_url, messages=[{"role": "user", "content": [{"type": "audio", "x": 1}]}])
    assert_hf_error(r, 400, "messages.0.content")
