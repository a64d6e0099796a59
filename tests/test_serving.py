# ruff: noqa: E501
"""The operator's contract end to end: x-use-cache on SQLite and Redis (stream and not),
API keys with both clients, and the Prometheus metrics."""

from __future__ import annotations

import json

import httpx
import huggingface_hub
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Server

HI = [{"role": "user", "content": "Tell me about the moon."}]
KEY = "sk-test-Key"


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory):
    srv = Server("--cache-dir", str(tmp_path_factory.mktemp("cache")), "--api-key", KEY)
    srv.wait_ready()
    yield srv.url
    srv.stop()


@pytest.fixture(scope="module")
def redis_served(redis_url):
    srv = Server("--cache-url", redis_url)
    srv.wait_ready()
    yield srv.url
    srv.stop()


def post(url: str, headers: dict | None = None, **body) -> httpx.Response:
    body.setdefault("messages", HI)
    auth = {"authorization": f"Bearer {KEY}"}
    return httpx.post(
        f"{url}/v1/chat/completions", json=body, headers=auth | (headers or {}), timeout=60
    )


def stream_text(url: str, headers: dict | None = None, **body) -> tuple[str, httpx.Headers]:
    body = {"messages": HI, "stream": True, **body}
    auth = {"authorization": f"Bearer {KEY}"}
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json=body, headers=auth | (headers or {}), timeout=60
    ) as r:
        raw = r.read().decode()
    assert raw.endswith("data: [DONE]\n\n")
    chunks = [json.loads(e[6:]) for e in raw.split("\n\n") if e.startswith("data: {")]
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
    ), r.headers


@pytest.mark.parametrize("served", ["sqlite_url", "redis_served"])
def test_deterministic_requests_hit_the_cache_stream_or_not(served, request):
    url = request.getfixturevalue(served)
    body = {"max_tokens": 12, "temperature": 0, "seed": None}  # an explicit null is no seed
    first = post(url, **body, headers={"user-agent": "a", "x-stainless-retry-count": "0"})
    assert first.headers["x-cache"] == "miss"
    again = post(url, **body, headers={"user-agent": "b", "x-stainless-retry-count": "2"})
    assert again.headers["x-cache"] == "hit"  # headers are not part of the key
    assert again.json() == first.json()
    # The same request as a stream is answered from the same entry, replayed as SSE.
    text, headers = stream_text(url, **body)
    assert headers["x-cache"] == "hit"
    assert text == first.json()["choices"][0]["message"]["content"]
    # A stream miss stores its answer too; the next (non-stream) request hits it.
    fresh = {"max_tokens": 10, "temperature": 0.7, "seed": 42}
    streamed, headers = stream_text(url, **fresh)
    assert headers["x-cache"] == "miss"
    hit = post(url, **fresh)
    assert hit.headers["x-cache"] == "hit"
    assert hit.json()["choices"][0]["message"]["content"] == streamed


def test_cache_is_skipped_when_asked_or_when_the_answer_may_vary(sqlite_url):
    body = {"max_tokens": 6, "temperature": 0}
    post(sqlite_url, **body)
    assert "x-cache" not in post(sqlite_url, **body, headers={"x-use-cache": "false"}).headers
    assert "x-cache" not in post(sqlite_url, max_tokens=6, temperature=0.9).headers  # no seed


def test_cached_stream_keeps_usage_and_done_framing(sqlite_url):
    body = {"max_tokens": 5, "temperature": 0, "stream_options": {"include_usage": True}}
    post(sqlite_url, max_tokens=5, temperature=0)
    with httpx.stream(
        "POST", f"{sqlite_url}/v1/chat/completions",
        json={"messages": HI, "stream": True, **body}, headers={"authorization": f"Bearer {KEY}"},
    ) as r:  # fmt: skip
        assert r.headers["x-cache"] == "hit"
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    last = json.loads(lines[-2][6:])
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 5


def test_openai_client_streams_from_the_cache(sqlite_url):
    client = openai.OpenAI(
        base_url=f"{sqlite_url}/v1", api_key=KEY, _strict_response_validation=True
    )
    kw = {"model": "dummy", "messages": HI, "max_tokens": 8, "temperature": 0}
    whole = client.chat.completions.create(**kw).choices[0].message.content
    parts = client.chat.completions.create(stream=True, **kw)
    assert "".join(c.choices[0].delta.content or "" for c in parts if c.choices) == whole


def test_api_keys_with_both_clients(sqlite_url):
    kw = {"messages": HI, "max_tokens": 2}
    assert (
        openai.OpenAI(base_url=f"{sqlite_url}/v1", api_key=KEY)
        .chat.completions.create(model="dummy", **kw)
        .choices
    )
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{sqlite_url}/v1", api_key=KEY.lower()).chat.completions.create(
            model="dummy", **kw
        )
    assert (
        huggingface_hub.InferenceClient(base_url=f"{sqlite_url}/v1/", api_key=KEY)
        .chat_completion(**kw)
        .choices
    )
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError) as raised:
        huggingface_hub.InferenceClient(base_url=f"{sqlite_url}/v1/").chat_completion(**kw)
    assert raised.value.response.status_code == 401
    assert raised.value.response.json()["error_type"] == "authentication"
    assert httpx.get(f"{sqlite_url}/health").status_code == 200  # public
    assert httpx.get(f"{sqlite_url}/v1/models").status_code == 401


def test_no_keys_means_open(redis_served):
    r = httpx.post(f"{redis_served}/v1/chat/completions", json={"messages": HI, "max_tokens": 2})
    assert r.status_code == 200


def test_metrics_count_requests_tokens_latencies_and_cache(sqlite_url):
    post(sqlite_url, max_tokens=4, temperature=0.5)
    post(
        sqlite_url, max_tokens=4, temperature=0, messages=[{"role": "user", "content": "Hi there"}]
    )
    post(
        sqlite_url, max_tokens=4, temperature=0, messages=[{"role": "user", "content": "Hi there"}]
    )
    text = httpx.get(f"{sqlite_url}/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def value(name: str, **labels) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    model = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert value("chatd_requests_total", route="/v1/chat/completions", status="200") >= 3
    assert value("chatd_generated_tokens_total", model=model) >= 8
    assert value("chatd_prompt_tokens_total", model=model) > 0
    assert value("chatd_time_to_first_token_seconds_count", model=model) >= 2
    assert value("chatd_inter_token_latency_seconds_count", model=model) >= 6
    assert value("chatd_cache_hits_total") >= 1 and value("chatd_cache_misses_total") >= 1
    assert value("chatd_model_state", model=model, state="ready") == 1
    assert value("chatd_model_load_seconds_count", model=model) == 1
    assert value("chatd_running_sequences", model=model) == 0
