"""Models from the Hugging Face Hub, against a fake Hub on 127.0.0.1 (tests/fake_hub.py):
`chatd pull` (file choice, resume, failures), and `chatd serve` pulling on first use with the
Inference API's loading contract (503 + estimated_time, x-wait-for-model), with both clients."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import huggingface_hub
import openai
import pytest

from chatd.models.sources import SMOLLM2_ID, packaged_models
from tests.conftest import Server, wait_until
from tests.fake_hub import FakeHub, HubFile, Repo, file_sha256

SMOL = packaged_models()[0].path
SNIPPET_MODEL = "google/gemma-2-2b-it"
SERVED_BY = "acme/smol-GGUF:Q4_K_M"
KEY = "sk-hub-test"
HI = [{"role": "user", "content": "Say hello."}]
# The tiny transformers model's files, and some the pull must leave alone.
TINY_EXTRAS = {
    "pytorch_model.bin": b"pickle" * 100,
    "tf_model.h5": b"tf" * 100,
    "flax_model.msgpack": b"flax" * 100,
    "onnx/model.onnx": b"onnx" * 100,
    "README.md": b"# tiny",
}


def _variant(dest: Path) -> Path:
    """SmolLM2's GGUF with one metadata letter changed: loads the same, another checksum."""
    data = SMOL.read_bytes()
    at = data.index(b"Smollm2 135M 8k")
    dest.write_bytes(data[:at] + b"Smollm2 135M 9k" + data[at + 15 :])
    return dest


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    from tests.tiny_models import build

    root = tmp_path_factory.mktemp("fake-hub")
    tiny = build("llama", root / "tiny-llama")
    tiny_files = {p.name: HubFile(p) for p in sorted(tiny.iterdir()) if p.is_file()}
    llava = build("llava", root / "tiny-llava")
    parts = [os.urandom(1_500_000), os.urandom(1_000_000)]
    fake = FakeHub(
        {
            "acme/smol-GGUF": Repo({
                "README.md": HubFile(b"# smol"),
                "smol-Q4_K_M.gguf": HubFile(SMOL),
                "smol-Q4_1.gguf": HubFile(_variant(root / "smol-q4_1.gguf")),
                "smol-Q8_0.gguf": HubFile(b"not loaded" * 10),
                "mmproj-smol-f16.gguf": HubFile(b"projector"),
                "Q2_K/smol-Q2_K-00001-of-00002.gguf": HubFile(parts[0]),
                "Q2_K/smol-Q2_K-00002-of-00002.gguf": HubFile(parts[1]),
            }),
            # ~4 MB/s: the download lasts long enough to be seen.
            "acme/tiny-llama": Repo(
                {**tiny_files, **{k: HubFile(v) for k, v in TINY_EXTRAS.items()}},
                bytes_per_second=4e6,
            ),
            "acme/tiny-llava": Repo(
                {p.name: HubFile(p) for p in llava.iterdir() if p.is_file()}
                | {"tf_model.h5": HubFile(b"tf")}
            ),
            "acme/flaky-GGUF": Repo({
                "flaky-Q4_K_M-00001-of-00002.gguf": HubFile(os.urandom(24_000_000)),
                "flaky-Q4_K_M-00002-of-00002.gguf": HubFile(os.urandom(2_000_000)),
            }),
            "acme/gated-GGUF": Repo({"gated-Q4_K_M.gguf": HubFile(b"gated")}, gated=True),
            # Its metadata waits until the test lets it answer.
            "acme/slow-GGUF": Repo(
                {"slow-Q4_K_M.gguf": HubFile(b"slow")}, info_gate=threading.Event()
            ),
            "acme/tf-only": Repo({"config.json": HubFile(b"{}"), "tf_model.h5": HubFile(b"t")}),
            # Declared a petabyte: refused before any byte, so never served.
            "acme/huge-GGUF": Repo({"huge-Q4_K_M.gguf": HubFile(None, size=10**15)}),
        }
    )  # fmt: skip
    fake.start()
    yield fake
    fake.stop()


def hub_env(hub: FakeHub, home: Path, **extra: str) -> dict[str, str]:
    """The fake Hub, a cache of the test's own, no token, online unless told."""
    return {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_TOKEN": "",
        "HF_HUB_OFFLINE": "",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        **extra,
    }


def chatd_pull(hub: FakeHub, home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "chatd", "pull", *args],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, **hub_env(hub, home, **env), "COLUMNS": "200"},
    )  # fmt: skip


def snapshot_files(home: Path, repo: str) -> set[str]:
    folder = home / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots"
    return {p.relative_to(s).as_posix() for s in folder.iterdir() for p in s.rglob("*")
            if p.is_file()}  # fmt: skip


def leftovers(home: Path) -> list[Path]:
    """Partial files anywhere in the cache."""
    return list((home / "hub").rglob("*.incomplete")) if (home / "hub").exists() else []


# -- chatd pull -----------------------------------------------------------------------------------


def test_pull_takes_the_quantisation_asked_for_any_case(hub, tmp_path):
    out = chatd_pull(hub, tmp_path, "acme/smol-GGUF:q4_1")
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip())
    assert path.name == "smol-Q4_1.gguf" and path.is_file()
    size = f"{path.stat().st_size / 1e6:.1f} MB"
    assert f"acme/smol-GGUF:Q4_1: 1 file, {size} (smol-Q4_1.gguf)" in " ".join(out.stderr.split())
    assert snapshot_files(tmp_path, "acme/smol-GGUF") == {"smol-Q4_1.gguf"}
    assert file_sha256(path) == hub.repos["acme/smol-GGUF"].files["smol-Q4_1.gguf"].sha256


def test_pull_defaults_to_q4_k_m_and_fetches_every_split_part(hub, tmp_path):
    out = chatd_pull(hub, tmp_path, "acme/smol-GGUF")
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).name == "smol-Q4_K_M.gguf"
    split = chatd_pull(hub, tmp_path, "acme/smol-GGUF:Q2_K")
    assert split.returncode == 0, split.stderr
    assert Path(split.stdout.strip()).name == "smol-Q2_K-00001-of-00002.gguf"
    assert snapshot_files(tmp_path, "acme/smol-GGUF") == {
        "smol-Q4_K_M.gguf",
        "Q2_K/smol-Q2_K-00001-of-00002.gguf",
        "Q2_K/smol-Q2_K-00002-of-00002.gguf",
    }


def test_pull_of_a_transformers_repo_takes_safetensors_only(hub, tmp_path):
    out = chatd_pull(hub, tmp_path, "acme/tiny-llama")
    assert out.returncode == 0, out.stderr
    got = snapshot_files(tmp_path, "acme/tiny-llama")
    assert "model.safetensors" in got and "config.json" in got and "tokenizer.json" in got
    assert not got & set(TINY_EXTRAS)


def test_pull_of_a_vision_model_takes_its_processor_files_too(hub, tmp_path):
    out = chatd_pull(hub, tmp_path, "acme/tiny-llava")
    assert out.returncode == 0, out.stderr
    built = set(hub.repos["acme/tiny-llava"].files) - {"tf_model.h5"}
    assert snapshot_files(tmp_path, "acme/tiny-llava") == built
    assert {"processor_config.json", "chat_template.jinja", "model.safetensors"} <= built


def test_pull_resumes_a_file_whose_connection_dropped(hub, tmp_path):
    repo, name = "acme/flaky-GGUF", "flaky-Q4_K_M-00001-of-00002.gguf"
    hub.drop_once[(repo, name)] = 15_000_000
    before = len(hub.requests(repo, "resolve", "GET"))
    out = chatd_pull(hub, tmp_path, repo)
    assert out.returncode == 0, out.stderr
    gets = [h for h in hub.requests(repo, "resolve", "GET")[before:] if h.path == name]
    # huggingface_hub writes in 10 MiB chunks: it asks again from the last whole chunk.
    assert len(gets) == 2 and gets[0].range_start == 0
    assert 0 < gets[1].range_start <= 15_000_000
    for part in ("flaky-Q4_K_M-00001-of-00002.gguf", "flaky-Q4_K_M-00002-of-00002.gguf"):
        path = Path(out.stdout.strip()).parent / part
        assert file_sha256(path) == hub.repos[repo].files[part].sha256
    assert leftovers(tmp_path) == []


def test_a_failed_pull_leaves_nothing_partial_and_the_next_one_completes(hub, tmp_path):
    repo, bad = "acme/flaky-GGUF", "flaky-Q4_K_M-00002-of-00002.gguf"
    hub.failing.add((repo, bad))
    try:
        out = chatd_pull(hub, tmp_path, repo)
    finally:
        hub.failing.discard((repo, bad))
    assert out.returncode == 1
    assert "download failed" in out.stderr and "Traceback" not in out.stderr
    assert leftovers(tmp_path) == []
    assert bad not in snapshot_files(tmp_path, repo)
    kept = snapshot_files(tmp_path, repo)  # the part that did arrive, whole
    before = len(hub.fetched(repo))
    again = chatd_pull(hub, tmp_path, repo)
    assert again.returncode == 0, again.stderr
    assert hub.fetched(repo)[before:] == sorted(
        {bad} | ({"flaky-Q4_K_M-00001-of-00002.gguf"} - kept)
    )
    assert file_sha256(Path(again.stdout.strip()).parent / bad) == hub.repos[repo].files[bad].sha256


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("acme/nothing-here", "acme/nothing-here was not found on the Hub (HTTP 401"),
        ("acme/gated-GGUF", "acme/gated-GGUF is gated on the Hub (HTTP 401)"),
        ("acme/tf-only", "acme/tf-only has no weights chatd can load"),
        ("acme/huge-GGUF", "needs 1000000000.0 MB more on disk"),
        ("acme/smol-GGUF:Q5_K_S", "acme/smol-GGUF has no Q5_K_S GGUF; it has Q2_K, Q4_1, Q4_K_M"),
    ],
)
def test_pull_refusals_are_one_clear_line_and_fetch_nothing(hub, tmp_path, model, message):
    repo = model.split(":")[0]
    before = len(hub.fetched(repo))
    out = chatd_pull(hub, tmp_path, model)
    assert out.returncode == 1
    assert message in " ".join(out.stderr.split()) and "Traceback" not in out.stderr
    assert hub.fetched(repo)[before:] == []
    assert not (tmp_path / "hub" / f"models--{repo.replace('/', '--')}" / "blobs").exists()


def test_a_gated_repo_opens_with_a_token_that_has_access(hub, tmp_path):
    denied = chatd_pull(hub, tmp_path, "acme/gated-GGUF", HF_TOKEN="hf_other")
    assert denied.returncode == 1 and "gated on the Hub (HTTP 403)" in denied.stderr
    out = chatd_pull(hub, tmp_path, "acme/gated-GGUF", HF_TOKEN="hf_good")
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).read_bytes() == b"gated"


# -- chatd serve ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf-home")


@pytest.fixture(scope="module")
def pulling(hub, cache_home):
    """Pulls on demand (acme/* only), within a 1 GB budget; its default model is pulled at
    start and also answers to the name the seed's snippet uses."""
    with Server(
        "--model", SERVED_BY, "--alias", f"{SNIPPET_MODEL}={SERVED_BY}",
        "--pull", "auto", "--pull-allow", "acme/*",
        "--memory-budget", "1GB", "--cache-url", "off", "--parallel", "4", "--ctx", "1024",
        "--load-retry", "1", env=hub_env(hub, cache_home),
    ) as srv:  # fmt: skip
        srv.wait_ready(timeout=300)
        yield srv.url


@pytest.fixture(scope="module")
def keyed(hub, cache_home):
    with Server(
        "--model", SMOLLM2_ID, "--pull", "auto", "--api-key", KEY, "--cache-url", "off",
        env=hub_env(hub, cache_home),
    ) as srv:  # fmt: skip
        srv.wait_ready(timeout=300)
        yield srv.url


def models(url: str, **headers: str) -> dict[str, dict]:
    r = httpx.get(f"{url}/v1/models", headers=headers)
    return {m["id"]: m for m in r.json()["data"]}


def ask(url: str, model: str, wait: bool = False, **headers: str) -> httpx.Response:
    if wait:
        headers["x-wait-for-model"] = "true"
    body = {"model": model, "messages": HI, "max_tokens": 4}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=300)


def test_the_seed_snippet_streams_from_a_pulled_model_under_its_alias(pulling, capsys):
    client = huggingface_hub.InferenceClient(base_url=f"{pulling}/v1/", api_key="hf_***")
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    stream = client.chat.completions.create(
        model="google/gemma-2-2b-it", messages=messages, max_tokens=500, stream=True
    )
    for chunk in stream:
        print(chunk.choices[0].delta.content, end="")
    assert capsys.readouterr().out.strip()
    assert SNIPPET_MODEL in models(pulling)[SERVED_BY]["aliases"]


def test_first_request_503_then_downloading_loading_ready_and_wait_is_answered(pulling, hub):
    model = "acme/tiny-llama"
    before = len(hub.fetched(model))
    # openai: one request, no retries (x-should-retry: false), the HF loading body.
    sent = []
    http = httpx.Client(event_hooks={"request": [sent.append]})
    oa = openai.OpenAI(base_url=f"{pulling}/v1", api_key="x", http_client=http)
    with pytest.raises(openai.InternalServerError) as raised:
        oa.chat.completions.create(model=model, messages=HI, max_tokens=4)
    response = raised.value.response
    assert response.status_code == 503 and len(sent) == 1
    assert response.headers["x-should-retry"] == "false"
    body = response.json()
    assert body["error_type"] == "loading" and body["estimated_time"] > 0
    assert body["error"].startswith(f"Model {model} is currently loading")

    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            row = models(pulling)[model]
            if not seen or seen[-1] != row["state"]:
                seen.append(row["state"])
                if row["state"] == "downloading":
                    assert (
                        row["total_bytes"] > 0
                        and 0 <= row["downloaded_bytes"] <= row["total_bytes"]
                    )
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        hf = huggingface_hub.InferenceClient(
            base_url=f"{pulling}/v1/", api_key="x", headers={"x-wait-for-model": "true"}
        )
        answer = hf.chat.completions.create(model=model, messages=HI, max_tokens=4)
    finally:
        stop.set()
        watcher.join()
    assert answer.model == model and answer.choices[0].message.content is not None
    assert seen[0] == "downloading" and seen[-1] == "ready", seen
    assert "loading" in seen, seen
    assert seen.index("downloading") < seen.index("loading") < seen.index("ready")
    assert sorted(hub.fetched(model)[before:]) == sorted(
        n for n in hub.repos[model].files if n not in TINY_EXTRAS
    )


def test_the_hub_lookup_never_stalls_the_server(pulling, hub):
    """While the Hub's metadata for one model is awaited, every other request is served."""
    gate = hub.repos["acme/slow-GGUF"].info_gate
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(ask, pulling, "acme/slow-GGUF")
        wait_until(lambda: hub.count("acme/slow-GGUF", "info"), 30, "the lookup to reach the Hub")
        assert httpx.get(f"{pulling}/health", timeout=10).status_code == 200
        assert ask(pulling, SERVED_BY).status_code == 200
        assert not pending.done()  # still waiting for the Hub
        gate.set()
        assert pending.result().status_code in (503, 200)


def test_ten_concurrent_requests_share_one_download(pulling, hub):
    model, file = "acme/smol-GGUF:q4_1", "smol-Q4_1.gguf"
    before = len(hub.requests("acme/smol-GGUF", "resolve", "GET"))
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: ask(pulling, model, wait=True), range(10)))
    assert [a.status_code for a in answers] == [200] * 10, answers[0].text
    assert {a.json()["model"] for a in answers} == {"acme/smol-GGUF:Q4_1"}
    gets = hub.requests("acme/smol-GGUF", "resolve", "GET")[before:]
    assert [h.path for h in gets] == [file]


@pytest.mark.parametrize(
    ("model", "status", "kind", "message"),
    [
        ("acme/nothing-here", 404, "not_found", "not found on the Hub"),
        ("acme/gated-GGUF", 403, "pull_refused", "gated on the Hub (HTTP 401)"),
        ("acme/tf-only", 422, "unsupported_model", "no weights chatd can load"),
        ("acme/huge-GGUF", 403, "pull_refused", "larger than the memory budget"),
        ("elsewhere/model", 403, "pull_refused", "matches no --pull-allow pattern (acme/*)"),
    ],
)
def test_refused_pulls_are_clear_and_fetch_nothing(
    pulling, hub, cache_home, model, status, kind, message
):
    before_any = len(hub.requests(model))
    before = len(hub.fetched(model))
    r = ask(pulling, model)
    assert r.status_code == status, r.text
    assert r.json()["error_type"] == kind and message in r.json()["error"]
    assert hub.fetched(model)[before:] == []
    if model.startswith("elsewhere/"):
        assert len(hub.requests(model)) == before_any  # not even asked
    assert model not in models(pulling)
    assert not (cache_home / "hub" / f"models--{model.replace('/', '--')}").exists()


def test_a_failed_download_shows_why_and_the_retry_fetches_only_what_is_missing(pulling, hub):
    repo, bad = "acme/flaky-GGUF", "flaky-Q4_K_M-00002-of-00002.gguf"
    hub.failing.add((repo, bad))
    try:
        failed = ask(pulling, repo, wait=True)
    finally:
        hub.failing.discard((repo, bad))
    assert failed.status_code == 503 and failed.json()["error_type"] == "load_failed"
    row = models(pulling)[repo]
    assert row["state"] == "failed" and "the Hub failed (HTTP 500)" in row["error"]
    before = len(hub.fetched(repo))
    deadline = time.monotonic() + 60
    # After --load-retry (1 s), a request starts the download again.
    while (again := ask(pulling, repo)).json()["error_type"] == "load_failed":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert again.status_code == 503 and again.json()["error_type"] == "loading"
    while models(pulling)[repo]["state"] == "downloading" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hub.fetched(repo)[before:] == [bad]


def test_only_an_authenticated_request_triggers_a_pull(keyed, hub):
    model = "acme/smol-GGUF:Q4_K_M"
    before = len(hub.requests("acme/smol-GGUF"))
    for path in ("/v1/chat/completions", "/models/acme/smol-GGUF/v1/chat/completions"):
        r = httpx.post(f"{keyed}{path}", json={"model": model, "messages": HI}, timeout=30)
        assert r.status_code == 401
    for path in ("/health", "/metrics", "/playground", "/"):
        httpx.get(f"{keyed}{path}", timeout=30)
    assert len(hub.requests("acme/smol-GGUF")) == before
    auth = {"authorization": f"Bearer {KEY}"}
    answered = ask(keyed, model, wait=True, **auth)
    assert answered.status_code == 200, answered.text
    assert models(keyed, **auth)[model]["state"] == "ready"


def test_a_second_start_finds_pulled_models_offline(hub, cache_home, pulling):
    """After the tests above pulled them; --pull never and no network."""
    assert ask(pulling, "acme/tiny-llama", wait=True).status_code == 200
    before = len(hub.hits)
    srv = Server(
        "--model", "acme/smol-GGUF:q4_1", "--pull", "never", "--cache-url", "off",
        env=hub_env(hub, cache_home, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    try:
        srv.wait_ready(timeout=300)
        assert ask(srv.url, "acme/tiny-llama", wait=True).status_code == 200
        never = ask(srv.url, "acme/not-pulled")
        assert never.status_code == 404 and "--pull is never" in never.json()["error"]
        assert httpx.get(f"{srv.url}/info").json()["model_id"] == "acme/smol-GGUF:Q4_1"
    finally:
        srv.stop()
    assert len(hub.hits) == before  # the Hub was never asked
