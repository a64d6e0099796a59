"""While a model loads: 503 with estimated_time and x-should-retry: false, for both clients."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import huggingface_hub
import openai
import pytest

from chatd.config import Settings
from chatd.models.registry import ModelState, Registry
from chatd.models.sources import ModelSource
from chatd.server.app import create_app
from tests.conftest import serve_in_thread

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def loading(tmp_path: Path):
    """A server whose model is a quarter loaded after 3 seconds: about 9 seconds to go."""
    registry = Registry(
        Settings(cache_url="off"), [ModelSource("test/slow", tmp_path / "slow.gguf")]
    )
    entry = registry.default
    entry.state, entry.progress, entry.load_started = ModelState.LOADING, 0.25, time.monotonic() - 3
    app = create_app(Settings(cache_url="off"), registry)
    hits = []

    @app.middleware("http")
    async def count(request, call_next):
        hits.append(request.url.path)
        return await call_next(request)

    with serve_in_thread(app) as url:
        yield url, hits


def test_health_and_chat_are_503_with_estimated_time(loading):
    url, _ = loading
    for r in (
        httpx.get(f"{url}/health"),
        httpx.post(f"{url}/v1/chat/completions", json={"messages": HI}),
    ):
        assert r.status_code == 503
        body = r.json()
        assert body["error"] == "Model test/slow is currently loading"
        assert 8 <= body["estimated_time"] <= 20  # about 3 s x 3: from the progress so far
        assert r.headers["x-should-retry"] == "false"


def test_models_lists_the_loading_state(loading):
    url, _ = loading
    data = httpx.get(f"{url}/v1/models").json()["data"]
    assert [(m["id"], m["state"]) for m in data] == [("test/slow", "loading")]


def test_hf_client_raises_with_estimated_time_readable(loading):
    url, _ = loading
    client = huggingface_hub.InferenceClient(base_url=f"{url}/v1/")
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError) as raised:
        client.chat_completion(HI)
    assert raised.value.response.status_code == 503
    assert raised.value.response.json()["estimated_time"] > 0


def test_openai_does_not_retry_a_loading_503(loading):
    url, hits = loading
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=2)
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model="dummy", messages=HI)
    assert raised.value.status_code == 503
    assert hits.count("/v1/chat/completions") == 1
