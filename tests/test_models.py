# ruff: noqa: E501
"""Many models by id: loading on first use, wait-for-model, LRU unloading under a budget,
keep-alive, failed loads and their retry, --models-dir, backpressure and time limits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

import httpx
import huggingface_hub
import openai
import pytest

from chatd.models.sources import SMOLLM2_ID, ModelSource, resolve
from tests.conftest import NO_END, Server, wait_until

SMOL = str(resolve(SMOLLM2_ID).path)
HI = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def started():
    servers: list[Server] = []

    def start(*args: str, env: dict[str, str] | None = None) -> str:
        srv = Server("--cache-url", "off", *args, env=env)
        servers.append(srv)
        srv.wait_ready()
        return srv.url

    yield start
    for srv in servers:
        srv.stop()


def states(url: str) -> dict[str, str]:
    return {m["id"]: m["state"] for m in httpx.get(f"{url}/v1/models").json()["data"]}


def ask(url: str, model: str, wait: bool = False, **extra) -> httpx.Response:
    headers = {"x-wait-for-model": "true"} if wait else {}
    body = {"model": model, "messages": HI, "max_tokens": 3, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)


def test_loading_503_then_wait_for_model_serves(started, tmp_path):
    url = started("--model", f"a={SMOL}", "--model", f"b={SMOL}")
    assert states(url) == {
        "a": "ready",
        "b": "available",
        "Qwen/Qwen2.5-Coder-0.5B-Instruct": "available",
    } | {SMOLLM2_ID: "available"}
    first = ask(url, "b")
    assert first.status_code == 503
    assert first.json()["error"] == "Model b is currently loading"
    assert first.json()["estimated_time"] > 0
    assert first.headers["x-should-retry"] == "false"
    served = ask(url, "b", wait=True)
    assert served.status_code == 200 and served.json()["model"] == "b"
    assert states(url)["b"] == "ready"


def test_clients_see_the_loading_state(started):
    url = started("--model", f"a={SMOL}", "--model", f"c={SMOL}")
    hf = huggingface_hub.InferenceClient(base_url=f"{url}/models/x/y")  # a path model...
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError):  # ...that is not served
        hf.chat_completion(HI)
    with pytest.raises(openai.APIStatusError) as raised:
        openai.OpenAI(base_url=f"{url}/v1", api_key="x").chat.completions.create(
            model="c", messages=HI
        )
    assert raised.value.status_code == 503
    waiting = openai.OpenAI(
        base_url=f"{url}/v1", api_key="x", default_headers={"X-Wait-For-Model": "1"}
    )
    assert waiting.chat.completions.create(model="c", messages=HI, max_tokens=2).model == "c"


def test_lru_model_is_unloaded_under_a_memory_budget(started):
    # Room for two copies, not three (a small KV cache: weights are most of each).
    budget = str(int(2.5 * resolve(SMOLLM2_ID).size))
    url = started(
        "--model", f"a={SMOL}", "--model", f"b={SMOL}", "--model", f"c={SMOL}",
        "--memory-budget", budget, "--parallel", "1", "--ctx", "256",
    )  # fmt: skip
    assert ask(url, "b", wait=True).status_code == 200
    assert ask(url, "a", wait=True).status_code == 200  # a is now the most recently used
    assert ask(url, "c", wait=True).status_code == 200  # room for c: b (LRU) goes
    got = states(url)
    assert (got["a"], got["b"], got["c"]) == ("ready", "available", "ready")


def test_max_loaded_models_and_a_model_in_use_is_kept(started):
    url = started("--model", f"a={SMOL}", "--model", f"b={SMOL}", "--max-loaded-models", "1")

    async def run():
        async with httpx.AsyncClient(timeout=120) as client:
            long = asyncio.create_task(
                client.post(f"{url}/v1/chat/completions", json={"model": "a", "messages": HI, "max_tokens": 300, "logit_bias": NO_END})
            )  # fmt: skip
            async with asyncio.timeout(60):  # until a (the default model) is generating
                while (await client.get(f"{url}/info")).json()["sequences"]["running"] == 0:
                    await asyncio.sleep(0.05)
            # a is busy: it cannot be unloaded for b, so b is refused as overloaded for now.
            refused = await client.post(
                f"{url}/v1/chat/completions", json={"model": "b", "messages": HI}
            )
            await long
            return refused

    refused = asyncio.run(run())
    assert refused.status_code == 503 and refused.json()["error_type"] == "overloaded"
    assert ask(url, "b", wait=True).status_code == 200
    assert states(url)["a"] == "available" and states(url)["b"] == "ready"


def test_keep_alive_unloads_an_idle_model(started):
    url = started("--model", f"a={SMOL}", "--model", f"b={SMOL}", "--keep-alive", "1")
    assert ask(url, "b", wait=True).status_code == 200
    wait_until(lambda: states(url)["b"] == "available", 30, "keep-alive to unload b")


def test_failed_load_reports_its_cause_and_is_retried(started, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF but not really")
    url = started("--model", f"a={SMOL}", "--model", f"bad={broken}", "--load-retry", "1")
    assert ask(url, "bad").status_code == 503  # loading starts
    wait_until(lambda: states(url)["bad"] == "failed", 30, "the broken model to fail")
    failed = ask(url, "bad")
    assert failed.status_code == 503 and "failed to load" in failed.json()["error"]
    assert failed.json()["error_type"] == "load_failed" and int(failed.headers["retry-after"]) >= 1
    listed = {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}
    assert "could not load" in listed["bad"]["error"]
    # Within the back-off a request gets the failure; after it, one starts loading again.
    wait_until(lambda: ask(url, "bad").status_code == 503, 30, "the retry after the back-off")


def test_wait_for_model_gives_up_after_the_wait_timeout(started, tmp_path):
    # The model's file is a pipe: its load blocks until the test writes, so it can never be
    # ready within the wait, however fast the machine.
    slow = tmp_path / "slow.gguf"
    os.mkfifo(slow)
    url = started(
        "--model", f"a={SMOL}", "--model", f"slow={slow}", "--runner", "llamacpp",
        "--wait-timeout", "0.5",
    )  # fmt: skip
    try:
        r = ask(url, "slow", wait=True)
        assert r.status_code == 503, r.text
        assert r.json()["error_type"] == "loading" and r.json()["estimated_time"] > 0
        assert r.headers["x-should-retry"] == "false"
        assert states(url)["slow"] == "loading"
    finally:
        _release(slow)
    wait_until(lambda: states(url)["slow"] == "failed", 30, "the emptied pipe to fail to load")


def _release(fifo: Path) -> None:
    """End the load blocked on the pipe (if it has opened it): it reads an empty file."""
    with contextlib.suppress(OSError):  # ENXIO: nobody has it open for reading
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_models_dir_serves_its_gguf_files(started, tmp_path):
    (tmp_path / "tiny.gguf").symlink_to(SMOL)
    url = started("--models-dir", str(tmp_path))
    assert "tiny" in states(url)
    assert ask(url, "tiny", wait=True).json()["model"] == "tiny"


def test_full_queue_is_429_with_retry_after(started):
    url = started("--model", f"a={SMOL}", "--parallel", "1", "--max-queue", "1")
    body = {"messages": HI, "max_tokens": 200, "logit_bias": NO_END}

    async def run():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(
                *(client.post(f"{url}/v1/chat/completions", json=body) for _ in range(4))
            )

    # One slot, one place in the queue: two are served, two are refused, whatever the timing.
    codes = sorted(r.status_code for r in asyncio.run(run()))
    assert codes == [200, 200, 429, 429]
    refused = next(r for r in asyncio.run(run()) if r.status_code == 429)
    assert refused.json()["error_type"] == "overloaded" and refused.headers["retry-after"]
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    assert client.chat.completions.create(model="a", messages=HI, max_tokens=2).choices


def test_request_time_limit(started):
    url = started("--model", f"a={SMOL}", "--request-timeout", "0.5")
    long = {
        "messages": HI,
        "max_tokens": 2000,
        "temperature": 1,
        "seed": 1,
        "logit_bias": {"2": -100, "0": -100},
    }
    r = httpx.post(f"{url}/v1/chat/completions", json=long, timeout=60)
    assert r.status_code == 504 and "time limit" in r.json()["error"]
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json={**long, "stream": True}, timeout=60
    ) as s:
        last = [line for line in s.iter_lines() if line][-1]
    assert json.loads(last.removeprefix("data: "))["error_type"] == "timeout"


def test_org_name_from_the_local_hf_cache(started, tmp_path):
    # The layout huggingface_hub's cache uses: refs/main names the snapshot, files link to blobs.
    repo = tmp_path / "models--acme--tiny-chat"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (repo / "blobs" / "deadbeef").symlink_to(SMOL)
    (repo / "snapshots" / "abc123" / "tiny.Q4_1.gguf").symlink_to("../../blobs/deadbeef")
    url = started("--model", f"a={SMOL}", env={"HF_HUB_CACHE": str(tmp_path)})
    r = httpx.post(
        f"{url}/models/acme/tiny-chat/v1/chat/completions",
        json={"messages": HI, "max_tokens": 2},
        headers={"x-wait-for-model": "true"},
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["model"] == "acme/tiny-chat"
    assert states(url)["acme/tiny-chat"] == "ready"
    assert ask(url, "acme/not-cached").status_code == 404


def test_a_vision_model_folder_from_the_local_hf_cache(started, tmp_path, tiny_models):
    """An `org/name` snapshot folder (no GGUF) loads with transformers and takes images."""
    snapshot = tmp_path / "models--acme--tiny-vlm" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (tmp_path / "models--acme--tiny-vlm" / "refs").mkdir()
    (tmp_path / "models--acme--tiny-vlm" / "refs" / "main").write_text("abc123")
    for file in tiny_models["llava"].iterdir():
        (snapshot / file.name).symlink_to(file)
    url = started(
        "--model", f"a={SMOL}", env={"HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    )
    pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
    content = [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{pixel}"}},
        {"type": "text", "text": "What is this?"},
    ]
    r = ask(url, "acme/tiny-vlm", wait=True, messages=[{"role": "user", "content": content}])
    assert r.status_code == 200, r.text
    assert r.json()["system_fingerprint"].endswith("transformers")


@pytest.mark.parametrize("runner", ["llamacpp", "transformers"])
def test_memory_budget_counts_what_a_loaded_model_holds(started, tiny_models, runner):
    """A loaded model counts its weights and KV cache (here about twice its files): two copies
    fit the budget by file size, not by what they hold."""
    if runner == "llamacpp":
        path, slots = Path(SMOL), ["--parallel", "4", "--ctx", "1024"]
    else:
        path, slots = tiny_models["llama"], ["--parallel", "32", "--ctx", "2048"]
    size = ModelSource("a", path).size
    url = started(
        "--model", f"a={path}", "--model", f"b={path}", "--runner", runner, *slots,
        "--memory-budget", str(int(2.4 * size)), env={"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert ask(url, "a", wait=True).status_code == 200
    assert ask(url, "b", wait=True).status_code == 200  # a (idle, LRU) makes room
    got = states(url)
    assert (got["a"], got["b"]) == ("available", "ready")
