"""A runner that fails mid-generation: the real scheduler, HTTP layer and clients report it.

The model is a tiny byte-level stand-in whose forward breaks on its fourth call, so the stream
has started (role and content sent) before the failure arrives as an SSE error event.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import huggingface_hub
import numpy as np
import openai
import pytest

from chatd.chat.template import ChatTemplate
from chatd.config import Settings
from chatd.engine.engine import Engine
from chatd.models.loader import LoadedModel
from chatd.models.registry import ModelState, Registry
from chatd.models.sources import ModelSource
from chatd.server.app import create_app
from tests.conftest import serve_in_thread
from tests.unit.fake_runner import ByteTokenizer


class BreaksOnFourthForward:
    name = "test"
    vision = False
    memory_bytes = 0
    n_slots, n_ctx, max_batch_tokens = 2, 256, 256
    tokenizer = ByteTokenizer()

    def __init__(self):
        self.calls = 0

    def forward(self, items):
        self.calls += 1
        if self.calls == 4:
            raise RuntimeError("the device fell over")
        logits = np.zeros((sum(i.want_logits for i in items), self.tokenizer.n_vocab), np.float32)
        logits[:, ord("a")] = 10.0
        return logits

    def truncate(self, slot: int, keep: int) -> int:
        return 0

    def close(self) -> None:
        pass


@pytest.fixture
def failing_url(tmp_path: Path):
    settings = Settings(cache_url="off")
    registry = Registry(settings, [ModelSource("test/broken", tmp_path / "none.gguf")])
    runner = BreaksOnFourthForward()
    registry.default.loaded = LoadedModel("test/broken", Engine(runner), ChatTemplate(None))
    registry.default.state = ModelState.READY
    with serve_in_thread(create_app(settings, registry)) as url:
        yield url


HI = [{"role": "user", "content": "hi"}]


def test_failure_mid_stream_is_an_sse_error_event(failing_url):
    body = {"messages": HI, "stream": True, "max_tokens": 50}
    with httpx.stream("POST", f"{failing_url}/v1/chat/completions", json=body) as r:
        events = [line for line in r.iter_lines() if line]
    assert events[0].startswith('data: {"id"')  # content was already flowing
    assert events[-1] == (
        'data: {"error": "generation failed: the device fell over", "error_type": "generation"}'
    )


def test_hf_client_raises_generation_error_mid_stream(failing_url):
    hf = huggingface_hub.InferenceClient(base_url=f"{failing_url}/v1/")
    with pytest.raises(huggingface_hub.errors.GenerationError, match="fell over"):
        for _ in hf.chat_completion(HI, stream=True, max_tokens=50):
            pass


def test_openai_raises_on_a_mid_stream_failure(failing_url):
    client = openai.OpenAI(base_url=f"{failing_url}/v1", api_key="x")
    with pytest.raises(openai.APIError) as raised:
        for _ in client.chat.completions.create(
            model="dummy", messages=HI, stream=True, max_tokens=50
        ):
            pass
    assert "fell over" in raised.value.body


def test_failure_in_a_non_stream_request_is_a_500_with_hf_body(failing_url):
    r = httpx.post(f"{failing_url}/v1/chat/completions", json={"messages": HI, "max_tokens": 50})
    assert r.status_code == 500
    assert r.json() == {
        "error": "generation failed: the device fell over",
        "error_type": "generation",
    }
