"""Which files of a Hub repo a pull fetches (models/hub.py), the checks before a pull
(models/pull.py) and the statuses of their refusals (server/errors.py)."""

from __future__ import annotations

import re

import pytest

from chatd.config import SettingsError, load_settings
from chatd.models.errors import ModelNotFound, NoDisk, NoWeights, PullRefused
from chatd.models.hub import HubRef, RemoteFile, choose_files, is_hub_id
from chatd.models.pull import PullPlan, check_room, may_pull
from chatd.server.errors import as_chatd

GGUF_REPO = [
    RemoteFile(".gitattributes", 1_500),
    RemoteFile("README.md", 9_000),
    RemoteFile("gemma-2-2b-it-Q8_0.gguf", 2_780_000_000),
    RemoteFile("gemma-2-2b-it-Q4_K_M.gguf", 1_710_000_000),
    RemoteFile("gemma-2-2b-it-IQ3_M.gguf", 1_390_000_000),
    RemoteFile("gemma-2-2b-it-f32.gguf", 10_500_000_000),
    RemoteFile("mmproj-gemma-2-2b-it-f16.gguf", 800_000_000),
    RemoteFile("gemma-2-2b-it-Q2_K/gemma-2-2b-it-Q2_K-00001-of-00002.gguf", 600_000_000),
    RemoteFile("gemma-2-2b-it-Q2_K/gemma-2-2b-it-Q2_K-00002-of-00002.gguf", 500_000_000),
]
TRANSFORMERS_REPO = [
    RemoteFile("config.json", 700),
    RemoteFile("generation_config.json", 100),
    RemoteFile("model-00001-of-00002.safetensors", 4_000_000_000),
    RemoteFile("model-00002-of-00002.safetensors", 1_000_000_000),
    RemoteFile("model.safetensors.index.json", 20_000),
    RemoteFile("pytorch_model.bin", 5_000_000_000),
    RemoteFile("tf_model.h5", 5_000_000_000),
    RemoteFile("flax_model.msgpack", 5_000_000_000),
    RemoteFile("onnx/model.onnx", 5_000_000_000),
    RemoteFile("onnx/config.json", 700),
    RemoteFile("tokenizer.json", 2_000_000),
    RemoteFile("tokenizer_config.json", 3_000),
    RemoteFile("tokenizer.model", 500_000),
    RemoteFile("special_tokens_map.json", 500),
    RemoteFile("chat_template.jinja", 1_000),
    RemoteFile("preprocessor_config.json", 400),
    RemoteFile("merges.txt", 400_000),
    RemoteFile("README.md", 9_000),
    RemoteFile("training_args.bin", 5_000),
]


def names(ref: str, files: list[RemoteFile]) -> list[str]:
    return [f.path for f in choose_files(HubRef.parse(ref), files)]


@pytest.mark.parametrize("quant", ["Q4_K_M", "q4_k_m", "Q4_k_M"])
def test_the_quantisation_asked_for_any_case_by_its_real_name(quant):
    assert names(f"bartowski/gemma-2-2b-it-GGUF:{quant}", GGUF_REPO) == [
        "gemma-2-2b-it-Q4_K_M.gguf"
    ]
    assert names("bartowski/gemma-2-2b-it-GGUF:q8_0", GGUF_REPO) == ["gemma-2-2b-it-Q8_0.gguf"]


def test_default_quantisation_is_q4_k_m_else_the_smallest():
    assert names("bartowski/gemma-2-2b-it-GGUF", GGUF_REPO) == ["gemma-2-2b-it-Q4_K_M.gguf"]
    without = [f for f in GGUF_REPO if "Q4_K_M" not in f.path]
    # The split Q2_K (1.1 GB in all) is smaller than IQ3_M (1.39 GB); the projector is no model.
    assert names("bartowski/gemma-2-2b-it-GGUF", without) == [
        "gemma-2-2b-it-Q2_K/gemma-2-2b-it-Q2_K-00001-of-00002.gguf",
        "gemma-2-2b-it-Q2_K/gemma-2-2b-it-Q2_K-00002-of-00002.gguf",
    ]


def test_a_split_gguf_is_every_part_in_order():
    assert names("bartowski/gemma-2-2b-it-GGUF:q2_k", GGUF_REPO) == [
        "gemma-2-2b-it-Q2_K/gemma-2-2b-it-Q2_K-00001-of-00002.gguf",
        "gemma-2-2b-it-Q2_K/gemma-2-2b-it-Q2_K-00002-of-00002.gguf",
    ]


def test_a_quantisation_the_repo_lacks_names_those_it_has():
    with pytest.raises(ModelNotFound, match=r"no Q5_K_S GGUF; it has F32, IQ3_M, Q2_K, Q4_K_M"):
        names("bartowski/gemma-2-2b-it-GGUF:Q5_K_S", GGUF_REPO)
    with pytest.raises(ModelNotFound, match="no GGUF files"):
        names("google/gemma-2-2b-it:Q4_K_M", TRANSFORMERS_REPO)


def test_transformers_repo_fetches_safetensors_and_what_the_runner_reads():
    assert names("google/gemma-2-2b-it", TRANSFORMERS_REPO) == [
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "merges.txt",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "preprocessor_config.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ]


def test_pytorch_pickles_only_without_safetensors():
    pickles = [f for f in TRANSFORMERS_REPO if "safetensors" not in f.path]
    chosen = names("acme/old", pickles)
    assert "pytorch_model.bin" in chosen
    assert not {"training_args.bin", "tf_model.h5", "flax_model.msgpack"} & set(chosen)


@pytest.mark.parametrize(
    "files",
    [
        [RemoteFile("README.md", 10)],
        [RemoteFile("config.json", 10), RemoteFile("tf_model.h5", 10)],
        [RemoteFile("config.json", 10), RemoteFile("onnx/model.onnx", 10)],
    ],
)
def test_a_repo_without_supported_weights_is_refused(files):
    with pytest.raises(NoWeights):
        names("acme/tf-only", files)


def test_hub_ids():
    assert HubRef.parse("bartowski/gemma-2-2b-it-GGUF:q4_k_m").id == (
        "bartowski/gemma-2-2b-it-GGUF:Q4_K_M"
    )
    assert HubRef.parse("google/gemma-2-2b-it", "v1.0") == HubRef(
        "google/gemma-2-2b-it", None, "v1.0"
    )
    assert not is_hub_id("gemma") and not is_hub_id("a/b/c") and not is_hub_id("/tmp/x")
    # The Hub's own rules (schemathesis found non-ASCII ids reaching huggingface_hub: a 500).
    assert not any(map(is_hub_id, ["áæ/Ðo", "a/-b", "a/b.", "org/na--me"]))
    with pytest.raises(ValueError, match="not a Hub id"):
        HubRef.parse("no-slash")


def test_pull_policy():
    may_pull("google/gemma-2-2b-it", "auto", [])
    may_pull("Google/Gemma-2-2b-it", "auto", ["google/*"])
    with pytest.raises(ModelNotFound, match="--pull is never"):
        may_pull("google/gemma-2-2b-it", "never", [])
    with pytest.raises(PullRefused, match="no --pull-allow pattern"):
        may_pull("evil/model", "auto", ["google/*", "bartowski/*"])


def test_budget_and_disk_are_checked_before_any_byte(tmp_path, monkeypatch):
    monkeypatch.setattr("chatd.models.pull.cache_root", lambda: tmp_path)
    plan = PullPlan(HubRef("acme/big"), (RemoteFile("big-Q4_K_M.gguf", 3 * 10**9),))
    check_room(plan, memory_budget=0, free_bytes=4 * 10**9)
    with pytest.raises(PullRefused, match=r"3000.0 MB\) is larger than the memory budget"):
        check_room(plan, memory_budget=2 * 10**9, free_bytes=4 * 10**9)
    with pytest.raises(NoDisk, match="needs 3000.0 MB more on disk"):
        check_room(plan, memory_budget=0, free_bytes=10**9)


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (PullRefused("x"), 403, "pull_refused"),
        (NoWeights("x"), 422, "unsupported_model"),
        (NoDisk("x"), 507, "insufficient_storage"),
        (ModelNotFound("x"), 404, "not_found"),
    ],
)
def test_pull_errors_have_statuses(error, status, kind):
    answer = as_chatd(error)
    assert (answer.status, answer.error_type) == (status, kind)


def test_settings_of_pulling_are_checked(monkeypatch):
    monkeypatch.delenv("CHATD_PULL_ALLOW", raising=False)
    settings = load_settings(
        {"aliases": ["x", "google/gemma-2-2b-it=bartowski/gemma-2-2b-it-GGUF:Q4_K_M"],
         "pull_allow_patterns": ["google/*", "bartowski/*"]}
    )  # fmt: skip
    assert (settings.pull, settings.pull_allow_patterns) == ("auto", ["google/*", "bartowski/*"])
    for given, problem in [
        ({"aliases": ["=x"]}, "--alias: an alias is NAME or NAME=ID, not '=x'"),
        ({"aliases": ["x="]}, "--alias: an alias is NAME or NAME=ID, not 'x='"),
        ({"pull_allow_patterns": ["a b"]}, "--pull-allow: a pattern matches ORG/NAME"),
        ({"pull": "sometimes"}, "--pull: Input should be 'auto' or 'never'"),
    ]:
        with pytest.raises(SettingsError, match=re.escape(problem)):
            load_settings(given)
