"""Which packaged model should `make run` serve by default: each one answers a few plain
questions through a real chatd (at the temperature a client gets by default, 1.0, and greedy),
and its decode speed is measured on one stream. The answers are printed for a person to judge
right or wrong; nothing is asserted. Speeds on a shared machine are rough: say how busy it was.

    python -m benchmarks.default_model [--model ID ...] [--seeds 3] [--speed-only]
"""

from __future__ import annotations

import argparse
import os
import time

import httpx

from chatd.models.sources import QWEN_ID, SMOLLM2_ID
from tests.conftest import Server

QUESTIONS = [
    "What is the capital of France?",
    "How many days are there in a week?",
    "What is 12 + 30?",
    "Which planet is closest to the Sun?",
    "What colour is the sky on a clear day?",
    "Who wrote Romeo and Juliet?",
]


def ask(url: str, question: str, temperature: float, seed: int) -> tuple[str, int, float]:
    body = {
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 48,
        "temperature": temperature,
        "seed": seed,
    }
    started = time.perf_counter()
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
    r.raise_for_status()
    data = r.json()
    return (
        data["choices"][0]["message"]["content"],
        data["usage"]["completion_tokens"],
        (time.perf_counter() - started),
    )


def speed(url: str) -> float:
    """Tokens per second of one stream asked for a long answer (128 tokens at most), time to
    first token included."""
    body = {
        "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}],
        "max_tokens": 128,
        "temperature": 0,
    }
    started = time.perf_counter()
    r = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
    r.raise_for_status()
    return r.json()["usage"]["completion_tokens"] / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--speed-only", action="store_true", help="skip the questions")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    for model in args.model or [SMOLLM2_ID, QWEN_ID]:
        srv = Server("--model", model, "--cache-url", "off", "--parallel", "1")
        try:
            srv.wait_ready(timeout=600)
            print(f"\n## {model}")
            for question in [] if args.speed_only else QUESTIONS:
                greedy, _, _ = ask(srv.url, question, 0.0, 0)
                print(f"- {question}\n  greedy: {greedy!r}")
                for seed in range(args.seeds):
                    text, _, _ = ask(srv.url, question, 1.0, seed)
                    print(f"  t=1 seed {seed}: {text!r}")
            rates = [speed(srv.url) for _ in range(3)]
            print(f"decode tok/s (3 runs): {[round(r, 1) for r in rates]}")
        finally:
            srv.stop()
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
