"""The HTTP contract: every URL form, the response and stream shapes, the info endpoints."""

from __future__ import annotations

import json

import httpx
import pytest
from huggingface_hub import InferenceClient
from openai import OpenAI

from tests.conftest import CTX, NO_END, PARALLEL, chat, sse_events

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
HI = [{"role": "user", "content": "Say hello."}]
# NO_END as HF's list form (one bias per token id from 0), for InferenceClient's logit_bias.
NO_END_LIST = [float(NO_END.get(str(i), 0)) for i in range(1 + max(map(int, NO_END)))]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions",
        "/v1/chat/completions/",
        "/chat/completions",
        "/chat/completions/",
        f"/models/{MODEL}/v1/chat/completions",
        f"/models/{MODEL}/v1/chat/completions/",
    ],
)
def test_every_url_form_answers(base_url, path):
    body = {"messages": HI, "max_tokens": 3, "logit_bias": NO_END}  # sampled: it must not end early
    r = httpx.post(f"{base_url}{path}", json=body, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == MODEL
    assert body["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    "make",
    [
        lambda u: InferenceClient(base_url=f"{u}/v1/"),
        lambda u: InferenceClient(base_url=u),
        lambda u: InferenceClient(model=u),
        lambda u: InferenceClient(model=f"{u}/models/{MODEL}"),
        lambda u: InferenceClient(base_url=f"{u}/models/{MODEL}"),
    ],
    ids=["base_url_v1", "base_url", "model_url", "model_path", "base_url_path"],
)
def test_hf_client_set_ups(base_url, make):
    out = make(base_url).chat_completion(HI, max_tokens=4, logit_bias=NO_END_LIST)
    assert out.choices[0].message.content
    assert out.usage.completion_tokens == 4


@pytest.mark.parametrize("suffix", ["/v1", "/v1/", "", f"/models/{MODEL}/v1"])
def test_openai_client_set_ups(base_url, suffix):
    client = OpenAI(base_url=f"{base_url}{suffix}", api_key="x", _strict_response_validation=True)
    out = client.chat.completions.create(
        model="dummy", messages=HI, max_tokens=4, logit_bias=NO_END
    )
    assert out.choices[0].message.content
    assert out.usage.completion_tokens == 4


def test_non_stream_body_has_openai_shape(openai_client):
    out = openai_client.chat.completions.create(model="tgi", messages=HI, max_tokens=5)
    assert out.object == "chat.completion"
    assert out.id.startswith("chatcmpl-")
    assert out.model == MODEL
    assert out.system_fingerprint
    assert len(out.choices) == 1
    choice = out.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.finish_reason in {"stop", "length"}
    assert choice.logprobs is None
    u = out.usage
    assert u.prompt_tokens > 0 and u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_stream_framing_role_once_and_done_exactly(base_url):
    # The end-of-turn tokens banned: a sampled answer could end before max_tokens.
    events = sse_events(base_url, max_tokens=8, logit_bias=NO_END)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0]["role"] == "assistant"
    assert all("role" not in d for d in deltas[1:])
    assert all(isinstance(d["content"], str) for d in deltas)
    assert [c["choices"][0]["finish_reason"] for c in chunks][:-1] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in c for c in chunks)


def test_stream_usage_only_when_asked(base_url):
    events = sse_events(
        base_url, max_tokens=6, logit_bias=NO_END, stream_options={"include_usage": True}
    )
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    *content, last = chunks
    assert all(c["usage"] is None for c in content)
    assert last["choices"] == []
    assert last["usage"]["completion_tokens"] == 6
    assert last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + 6


def test_stream_text_equals_non_stream_text(base_url, openai_client):
    body = {"messages": HI, "max_tokens": 24, "temperature": 0}
    whole = chat(base_url, **body).json()["choices"][0]["message"]["content"]
    parts = openai_client.chat.completions.create(model="dummy", stream=True, **body)
    assert "".join(c.choices[0].delta.content or "" for c in parts if c.choices) == whole


def test_openai_stream_helper_accumulates_one_role(openai_client):
    with openai_client.chat.completions.stream(
        model="dummy", messages=HI, max_tokens=200, temperature=0
    ) as s:
        final = s.get_final_completion()
    assert final.choices[0].message.role == "assistant"
    assert final.choices[0].message.content


def test_health_models_info(base_url, openai_client):
    health = httpx.get(f"{base_url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    models = openai_client.models.list().data
    # The default first (loaded at start), then the other packaged model, loaded on first use.
    states = [(m.id, m.model_extra["state"]) for m in models]
    assert states[0] == (MODEL, "ready")
    assert ("Qwen/Qwen2.5-Coder-0.5B-Instruct", "available") in states
    info = httpx.get(f"{base_url}/info").json()
    assert info["model_id"] == MODEL
    assert info["runner"] == "llamacpp"
    assert info["context_length"] == CTX
    assert info["max_parallel"] == PARALLEL
    assert info["limits"]["max_stop"] == 4


def test_unknown_path_is_404_with_hf_body(base_url):
    r = httpx.get(f"{base_url}/nope")
    assert r.status_code == 404
    assert set(r.json()) == {"error", "error_type"}
