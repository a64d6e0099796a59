"""A runner that fails mid-generation: the real scheduler, HTTP layer and clients report it.

The model is a tiny byte-level stand-in whose forward breaks on its fourth call, so the stream
has started (role and content sent) before the failure arrives as an SSE error event.
"""

from __future__ import annotations

import json
import threading
import time
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


def always_a(items, n_vocab: int) -> np.ndarray:
    """Logits that pick "a" for every item that wants some."""
    logits = np.zeros((sum(i.want_logits for i in items), n_vocab), np.float32)
    logits[:, ord("a")] = 10.0
    return logits


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
        return always_a(items, self.tokenizer.n_vocab)

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
    assert events[-1].startswith("data: {")
    assert json.loads(events[-1].removeprefix("data: ")) == {
        "error": "generation failed: the device fell over",
        "error_type": "generation",
    }


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


# -- a failed step fails only its own sequences ---------------------------------------------------


class GatedRunner:
    """Always favours 'a'; a test can hold its forwards at a gate and make the next one raise,
    so that it knows exactly which sequences were in the failed step."""

    name = "test"
    vision = False
    memory_bytes = 0
    n_slots, n_ctx, max_batch_tokens = 2, 1 << 20, 256
    tokenizer = ByteTokenizer()

    def __init__(self):
        self.open = threading.Event()
        self.open.set()
        self.held = threading.Event()  # a forward waits at the gate
        self.fail_next = False

    def forward(self, items):
        if not self.open.is_set():
            self.held.set()
            self.open.wait()
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the device fell over")
        return always_a(items, self.tokenizer.n_vocab)

    def truncate(self, slot: int, keep: int) -> int:
        return 0

    def close(self) -> None:
        self.open.set()


@pytest.fixture
def gated(tmp_path: Path):
    settings = Settings(cache_url="off", ctx=1 << 20)
    registry = Registry(settings, [ModelSource("test/gated", tmp_path / "none.gguf")])
    runner = GatedRunner()
    engine = Engine(runner)
    registry.default.loaded = LoadedModel("test/gated", engine, ChatTemplate(None))
    registry.default.state = ModelState.READY
    with serve_in_thread(create_app(settings, registry)) as url:
        yield url, runner, engine
    runner.open.set()


class Reader(threading.Thread):
    """A stream read on a thread: its `data:` payloads, and whether content has come."""

    def __init__(self, url: str, **body):
        super().__init__(daemon=True)
        self.url, self.body = url, {"messages": HI, "stream": True, "temperature": 0, **body}
        self.events: list[str] = []
        self.flowing = threading.Event()
        self.start()

    def run(self) -> None:
        try:
            with httpx.stream(
                "POST", f"{self.url}/v1/chat/completions", json=self.body, timeout=60
            ) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line.removeprefix("data: "))
                        self.flowing.set()
        finally:
            self.flowing.set()

    def finished(self) -> list[str]:
        self.join(timeout=60)
        assert not self.is_alive(), "the stream never ended"
        return self.events


def wait_for(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


FELL_OVER = {"error": "generation failed: the device fell over", "error_type": "generation"}
ENDLESS = 1 << 19  # tokens: a stream that runs until the test ends it


def test_a_failed_step_spares_the_sequence_waiting_for_a_slot(gated):
    url, runner, engine = gated
    running = [Reader(url, max_tokens=ENDLESS) for _ in range(runner.n_slots)]
    for reader in running:
        assert reader.flowing.wait(30)
    runner.open.clear()  # the scheduler stops at its next forward
    assert runner.held.wait(30)
    waiting = Reader(url, max_tokens=5)
    wait_for(lambda: engine.load().waiting == 1, "the third stream to queue for a slot")

    runner.fail_next = True
    runner.open.set()

    for reader in running:
        events = reader.finished()
        assert json.loads(events[-1]) == FELL_OVER
        assert "[DONE]" not in events
    events = waiting.finished()
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "aaaaa"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    # and the engine goes on serving
    greedy = {"messages": HI, "max_tokens": 3, "temperature": 0}
    r = httpx.post(f"{url}/v1/chat/completions", json=greedy)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "aaa"


class BreaksAfter:
    """A grammar state that follows the real one, then fails at its nth token: what llguidance
    does when a grammar hits one of its limits partway through an answer."""

    def __init__(self, inner, n: int):
        self.inner, self.n, self.error = inner, n, None
        self.active = True

    @property
    def matcher(self):
        return self.inner.matcher

    def __getattr__(self, name: str):  # the rest (forced tokens, the budget): the real state's
        return getattr(self.inner, name)

    def consume(self, token: int, text: str = "") -> None:
        self.inner.consume(token, text)
        self.n -= 1
        if self.n == 0:
            self.error = "lexer error: too many expressions constructed"


def test_a_grammar_error_mid_sequence_ends_only_that_sequence(gated, monkeypatch):
    url, runner, engine = gated
    real, made = engine.grammars.constraint, threading.Event()

    def breaking(grammar):
        made.set()  # the sequence is being submitted
        return BreaksAfter(real(grammar), 3)

    monkeypatch.setattr(engine.grammars, "constraint", breaking)
    runner.open.clear()  # hold the plain stream's first step: both share the next ones
    plain = Reader(url, max_tokens=400)
    assert runner.held.wait(30)
    pattern = {"type": "regex", "value": "a+"}
    constrained = Reader(url, max_tokens=50, response_format=pattern)
    assert made.wait(30)
    runner.open.set()

    events = constrained.finished()
    assert json.loads(events[-1]) == {
        "error": "grammar: lexer error: too many expressions constructed",
        "error_type": "generation",
    }
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == "aa"  # the third token broke the grammar: it never reached the client
    events = plain.finished()
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])["choices"][0]
    assert last["finish_reason"] == "length"
