"""The command line: `chatd chat` against the test server, `chatd models`, bad `serve` input."""

from __future__ import annotations

import subprocess
import sys

CHATD = [sys.executable, "-m", "chatd"]


def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([*CHATD, *args], input=stdin, capture_output=True, text=True, timeout=120)


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
