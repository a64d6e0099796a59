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
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *args: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"chatd-test-{self.port}.log"
        # Tests name their model: SmolLM2 unless they give one (not serve's default, Qwen).
        # And they never reach the real Hub: --pull never unless they say (test_hub.py).
        model = [] if "--model" in args else ["--model", SMOLLM2_ID]
        pull = [] if "--pull" in args else ["--pull", "never"]
        cmd = [sys.executable, "-m", "chatd", "serve", "--port", str(self.port), *model, *pull]
        cmd += args
        self._log_file = self.log.open("w")
        self.proc = subprocess.Popen(
            cmd, stdout=self._log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )

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

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log_file.close()


@contextlib.contextmanager
def serve_in_thread(app):
    """Serve an app built in the test itself (a registry in a chosen state) on a free port."""
    server = uvicorn.Server(uvicorn.Config(app, port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _missing(what: str) -> None:
    """Redis is tested wherever it can be: skip on a developer machine without it, fail in CI
    (env CI set), where .ci/run installs it: a cache backend nobody tests is a broken one."""
    message = f"{what}: install it (apt-get install -y redis-server; pip install redis)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must test the Redis cache, but {message}", pytrace=False)
    pytest.skip(message)


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
    srv = Server(
        "--parallel", str(PARALLEL), "--ctx", str(CTX), "--cache-url", "off",
        "--alias", SNIPPET_TEXT_MODEL,
    )  # fmt: skip
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def qwen_url():
    """Qwen2.5-Coder-0.5B (native tool calling), started only for the tests that ask for it."""
    srv = Server(
        "--model", "Qwen/Qwen2.5-Coder-0.5B-Instruct", "--parallel", "4", "--ctx", "2048",
        "--cache-url", "off",
    )  # fmt: skip
    try:
        srv.wait_ready(timeout=300)
        yield srv.url
    finally:
        srv.stop()


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


# -- vision-language models on the transformers runner -------------------------------------------

VISION_MODELS = {  # fixture kind -> the id chatd serves it under
    "mllama": SNIPPET_VISION_MODEL,
    "llava": "tiny-llava",
    "qwen2_vl": "tiny-qwen2-vl",
}
TEXT_MODELS = {"gemma2": SNIPPET_TEXT_MODEL, "llama": "tiny-llama"}
SMOLLM2_TRANSFORMERS = "smollm2-transformers"  # the packaged GGUF, dequantised
IMAGE_MAX_PIXELS = 1_000_000


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Every kind of tests/tiny_models.py, built once per session: kind -> folder."""
    from tests.tiny_models import KINDS, build

    root = tmp_path_factory.mktemp("tiny-models")
    return {kind: build(kind, root / kind) for kind in KINDS}


@pytest.fixture(scope="session")
def vision_server(tiny_models):
    """One chatd on the transformers runner serving tiny random VLMs and text models that the
    tests build (tests/tiny_models.py), and SmolLM2 dequantised from its GGUF. Image URLs on
    127.0.0.1 are allowed (the test image server); other private addresses are not."""
    from chatd.models.sources import packaged_models

    specs = []
    for kind, model_id in {**VISION_MODELS, **TEXT_MODELS}.items():
        specs += ["--model", f"{model_id}={tiny_models[kind]}"]
    specs += ["--model", f"{SMOLLM2_TRANSFORMERS}={packaged_models()[0].path}"]
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
