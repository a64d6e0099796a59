"""The command line: `chatd chat` against the test server, `chatd models`, bad `serve` input,
and serve's settings (flags, CHATD_* variables, --config) in a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHATD = [sys.executable, "-m", "chatd"]


def run(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
    return subprocess.run(
        [*CHATD, *args], input=stdin, capture_output=True, text=True, timeout=120,
        env={**clean, "COLUMNS": "200", **(env or {})},
    )  # fmt: skip


def test_chat_streams_two_turns_then_exits(base_url):
    out = run(
        "chat", "--url", base_url, "--temperature", "0", "--max-tokens", "8",
        stdin="Say hello.\nAnd again.\n/exit\n",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    answers = [line for line in out.stdout.splitlines() if "bot> " in line]
    assert len(answers) == 2
    assert all(line.split("bot> ", 1)[1].strip() for line in answers)


def test_models_lists_the_packaged_default():
    out = run("models")
    assert out.returncode == 0
    assert "SmolLM2-135M-Instruct" in out.stdout


def test_serve_refuses_a_missing_model_file():
    out = run("serve", "--model", "/nonexistent/model.gguf")
    assert out.returncode == 2
    assert "model file not found" in out.stdout + out.stderr


def test_serve_refuses_an_unknown_runner_or_dtype():
    for flag, value in (("--runner", "vllm"), ("--dtype", "int3"), ("--device", "tpu")):
        out = run("serve", flag, value)
        assert out.returncode == 2
        assert f"'{value}' is not one of" in out.stdout + out.stderr


def test_serve_help_shows_the_options_by_section():
    out = run("serve", "--help")
    assert out.returncode == 0
    for section in ("Server", "Models", "Batching", "Response cache", "Image URLs"):
        assert section in out.stdout
    for flag in ("--config", "--model", "--parallel", "--memory-budget", "--image-allow-host"):
        assert flag in out.stdout
    assert "sequences decoded together" in out.stdout


def test_serve_settings_come_from_flags_then_environment_then_config_file(tmp_path):
    config = tmp_path / "chatd.toml"
    config.write_text('parallel = 2\nctx = 512\nmodels = ["a.gguf"]\nmemory_budget = "2GB"\n')
    out = run(
        "serve", "--config", str(config), "--print-settings", "--ctx", "1024",
        env={"CHATD_PARALLEL": "3", "CHATD_API_KEY": "k1 k2"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert (shown["ctx"], shown["parallel"], shown["models"]) == (1024, 3, ["a.gguf"])
    assert shown["memory_budget"] == 2 * 10**9
    assert shown["api_keys"] == ["***", "***"]


def test_serve_refuses_bad_settings_with_exit_2_and_no_traceback(tmp_path):
    config = tmp_path / "chatd.toml"
    config.write_text("parallel = 0\nmax_tokens = 5\n")
    out = run("serve", "--config", str(config), "--port", "0", env={"CHATD_CTX": "8"})
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert f"{config}: unknown setting 'max_tokens'" in lines
    assert "--port: Input should be greater than or equal to 1 (got '0')" in lines
    assert "CHATD_CTX: Input should be greater than or equal to 16 (got '8')" in lines
    assert f"parallel in {config}: Input should be greater than or equal to 1 (got 0)" in lines
