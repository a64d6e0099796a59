"""A real chatd on a free loopback port, started once per test session with the real model."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import httpx
import pytest
import uvicorn

from chatd.models.sources import SMOLLM2_ID

# The seed's snippets name these models: the main test server serves the default model under the
# text one; the vision server serves tiny random models of both architectures under both.
SNIPPET_TEXT_MODEL = "google/gemma-2-2b-it"
SNIPPET_VISION_MODEL = "meta-llama/Llama-3.2-11B-Vision-Instruct"
PARALLEL = 8
CTX = 1024
# SmolLM2's end-of-generation token ids, banned where a request must run to max_tokens.
NO_END = {"0": -100, "2": -100, "4": -100}
ONE_SLOT_BATCH_TOKENS = 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *args: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"chatd-test-{self.port}.log"
        self._log_file = self.log.open("w")
        self.proc = subprocess.Popen(
            self.command(*args),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def command(self, *args: str) -> list[str]:
        # Tests name their model: SmolLM2 unless they give one (not serve's default, Qwen).
        # And they never reach the real Hub: --pull never unless they say (test_hub.py).
        model = [] if "--model" in args else ["--model", SMOLLM2_ID]
        pull = [] if "--pull" in args else ["--pull", "never"]
        return [sys.executable, "-m", "chatd", "serve", "--port", str(self.port), *model, *pull,
                *args]  # fmt: skip

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chatd exited early:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"chatd not ready after {timeout}s:\n{self.log.read_text()}")

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.end_process()
        self._log_file.close()

    def end_process(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@contextlib.contextmanager
def serve_in_thread(app):
    """Serve an app built in the test itself (a registry in a chosen state) on a free port."""
    server = uvicorn.Server(uvicorn.Config(app, port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), 30, "the in-thread server to start")
    assert server.started, "the in-thread server stopped before it started"
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll an outside state (another process, a thread) until it holds; fail after `timeout`
    seconds saying what never happened. Only for states no event tells us about."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}", pytrace=False)
        time.sleep(0.02)


def unavailable(what: str) -> NoReturn:
    """A tool a test needs is missing: skip on a developer machine, fail in CI (env CI set),
    where .ci/run installs everything: a feature nobody tests is a broken one."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must run this test, but {what}", pytrace=False)
    pytest.skip(what)


def _missing(what: str) -> NoReturn:
    unavailable(f"{what}: install it (apt-get install -y redis-server; pip install redis)")


def redis_package():
    try:
        import redis
    except ImportError:
        _missing("the `redis` Python package is not installed")
    return redis


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    binary = shutil.which("redis-server")
    if binary is None:
        _missing("redis-server is not on PATH")
    redis = redis_package()

    port = free_port()
    workdir: Path = tmp_path_factory.mktemp("redis")
    log_path = workdir / "redis.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=1)
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                pytest.fail(f"redis-server exited early:\n{log_path.read_text()}", pytrace=False)
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail(f"redis-server not ready:\n{log_path.read_text()}", pytrace=False)
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def server():
    # No response cache: these tests must see the engine answer every time.
    with Server(
        "--parallel", str(PARALLEL), "--ctx", str(CTX), "--cache-url", "off",
        "--alias", SNIPPET_TEXT_MODEL,
    ) as srv:  # fmt: skip
        srv.wait_ready()
        yield srv


@pytest.fixture(scope="session")
def qwen_url():
    """Qwen2.5-Coder-0.5B (native tool calling), started only for the tests that ask for it."""
    with Server(
        "--model", "Qwen/Qwen2.5-Coder-0.5B-Instruct", "--parallel", "4", "--ctx", "2048",
        "--cache-url", "off",
    ) as srv:  # fmt: skip
        srv.wait_ready(timeout=300)
        yield srv.url


@pytest.fixture(scope="session")
def one_slot_url():
    """The default model with one slot and small forwards: requests queue behind each other
    and a prompt longer than --batch-tokens is prefilled in several chunks."""
    with Server(
        "--parallel", "1", "--ctx", str(CTX), "--batch-tokens", str(ONE_SLOT_BATCH_TOKENS),
        "--cache-url", "off",
    ) as srv:  # fmt: skip
        srv.wait_ready()
        yield srv.url


@pytest.fixture(scope="session")
def base_url(server) -> str:
    return server.url


@pytest.fixture
def openai_client(base_url):
    from openai import OpenAI

    return OpenAI(base_url=f"{base_url}/v1", api_key="sk-test", _strict_response_validation=True)


@pytest.fixture
def hf_client(base_url):
    from huggingface_hub import InferenceClient

    return InferenceClient(base_url=f"{base_url}/v1/", api_key="hf_test")


def chat(base_url: str, **body) -> httpx.Response:
    """A raw POST, for what the clients would hide (status codes, headers, exact bytes)."""
    body.setdefault("messages", [{"role": "user", "content": "Say hello."}])
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120)


def sse_events(base_url: str, path: str = "/v1/chat/completions", **body) -> list[str]:
    """The raw `data:` payloads of a stream, [DONE] included."""
    body.setdefault("messages", [{"role": "user", "content": "Say hello."}])
    body["stream"] = True
    with httpx.stream("POST", f"{base_url}{path}", json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [block for block in raw.split("\n\n") if block]
    assert all(e.startswith("data: ") and "\n" not in e for e in events), raw
    return [e.removeprefix("data: ") for e in events]


def metric(base_url: str, name: str, **labels: str) -> float:
    """One sample of the server's /metrics (0 while it has not been recorded yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def sampled_tokens(base_url: str, model: str) -> float:
    """Every token the model's engine sampled so far, those of aborted requests included: the
    sum of the sequences sampled in each step."""
    return metric(base_url, "chatd_batch_sequences_sum", model=model)


def idle(base_url: str) -> bool:
    """The default model decodes nothing and has nothing queued (/info)."""
    return httpx.get(f"{base_url}/info", timeout=30).json()["sequences"] == {
        "running": 0,
        "waiting": 0,
    }


# -- vision-language models on the transformers runner -------------------------------------------

VISION_MODELS = {  # fixture kind -> the id chatd serves it under
    "mllama": SNIPPET_VISION_MODEL,
    "llava": "tiny-llava",
    "qwen2_vl": "tiny-qwen2-vl",
}
TEXT_MODELS = {"gemma2": SNIPPET_TEXT_MODEL, "llama": "tiny-llama"}
SMOLLM2_TRANSFORMERS = "smollm2-transformers"  # the packaged GGUF, dequantised
STRICT_MODEL = "tiny-strict"  # tiny llama whose template refuses roles that do not alternate
STRICT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if (message.role == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
IMAGE_MAX_PIXELS = 1_000_000


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Every kind of tests/tiny_models.py, built once per session: kind -> folder."""
    from tests.tiny_models import KINDS, build

    root = tmp_path_factory.mktemp("tiny-models")
    return {kind: build(kind, root / kind) for kind in KINDS}


def strict_template_model(tiny_llama: Path, dest: Path) -> Path:
    """The tiny llama's weights with STRICT_TEMPLATE as its chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = STRICT_TEMPLATE
    tokenizer.save_pretrained(dest)
    for file in tiny_llama.iterdir():
        if not (dest / file.name).exists():
            (dest / file.name).symlink_to(file)
    return dest


@pytest.fixture(scope="session")
def vision_server(tiny_models, tmp_path_factory):
    """One chatd on the transformers runner serving tiny random VLMs and text models that the
    tests build (tests/tiny_models.py), and SmolLM2 dequantised from its GGUF. Image URLs on
    127.0.0.1 are allowed (the test image server); other private addresses are not."""
    from chatd.models.sources import packaged_models

    specs = []
    for kind, model_id in {**VISION_MODELS, **TEXT_MODELS}.items():
        specs += ["--model", f"{model_id}={tiny_models[kind]}"]
    specs += ["--model", f"{SMOLLM2_TRANSFORMERS}={packaged_models()[0].path}"]
    strict = strict_template_model(tiny_models["llama"], tmp_path_factory.mktemp("strict"))
    specs += ["--model", f"{STRICT_MODEL}={strict}"]  # loaded by the test that asks for it
    srv = Server(
        *specs, "--runner", "transformers", "--parallel", "4", "--ctx", "512",
        "--cache-url", "off", "--image-allow-host", "127.0.0.1",
        "--image-max-pixels", str(IMAGE_MAX_PIXELS),
        env={"HF_HUB_OFFLINE": "1"},  # the models are folders here: never ask the hub
    )  # fmt: skip
    try:
        srv.wait_ready(timeout=300)
        for model_id in [*VISION_MODELS.values(), *TEXT_MODELS.values(), SMOLLM2_TRANSFORMERS]:
            r = httpx.post(
                f"{srv.url}/v1/chat/completions",
                json={"model": model_id, "messages": [{"role": "user", "content": "hi"}],
                      "max_tokens": 1},
                headers={"x-wait-for-model": "true"},
                timeout=300,
            )  # fmt: skip
            assert r.status_code == 200, (model_id, r.text, srv.log.read_text()[-3000:])
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def vision_url(vision_server) -> str:
    return vision_server.url
