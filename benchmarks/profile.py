"""Where a streaming chatd spends its Python time, per completion token: py-spy on a live server.

    python -m benchmarks.profile [--src src] [--levels 1,8] [--requests 8] [--max-tokens 48] \\
        [--temperature 0.8] [--serve-args "--threads 1"] [--top 15]

Starts chatd (imported from --src), and for each level runs `benchmarks.load` against it while
`py-spy record` samples every thread of the server (`--idle` off: a thread waiting on a lock or
in select is not counted; native frames off, so time inside llama.cpp shows as the Python line
that called it). Prints, per level, the functions with the most samples of their own (self)
and the stages of a token (inclusive), each as milliseconds of one core per completion token
(samples / rate / tokens): compare two trees by running it on each. Needs `py-spy` (the
`bench` extra) and the right to ptrace the server (Linux: a child of this process is fine).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.load import run_levels
from benchmarks.vs_llama_server import free_port, serving

# The stages of a token, as the functions that do them (inclusive time).
STAGES = {
    "forward (llama.cpp)": "forward (chatd/engine/runners/",
    "sampling": "_sample (chatd/engine/scheduler.py",
    "grammar masks": "_grammar_masks (chatd/engine/scheduler.py",
    "per-sequence stages": "_advance (chatd/engine/scheduler.py",
    "events to requests": "_deliver (chatd/engine/",
    "SSE framing": "_stream (chatd/server/streaming.py",
    "HTTP send": "send (uvicorn/protocols/http/",
}


def profile_level(pid: int, url: str, level: int, args: argparse.Namespace) -> dict:
    out = Path(tempfile.mkdtemp()) / f"c{level}.txt"
    spy = subprocess.Popen(
        [
            "py-spy",
            "record",
            "-p",
            str(pid),
            "-r",
            str(args.rate),
            "-f",
            "raw",
            "-o",
            str(out),
            "--nonblocking",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    body = {"temperature": args.temperature}
    try:
        [row] = asyncio.run(
            run_levels(url, [level], args.requests, args.max_tokens, warmup=False, extra_body=body)
        )
    finally:
        spy.terminate()  # py-spy writes its file when stopped
        spy.wait()
    return {"row": row, "stacks": read_raw(out)}


def read_raw(path: Path) -> collections.Counter:
    """py-spy's raw (collapsed) format: `frame;frame;...;leaf count` per line."""
    stacks: collections.Counter = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            stacks[stack] += int(count)
    return stacks


def report(level: int, got: dict, args: argparse.Namespace) -> None:
    tokens = max(1, got["row"]["completion_tokens"])
    per_token = 1e3 / args.rate / tokens  # ms of one core per sample, per token
    own: collections.Counter = collections.Counter()
    stages: collections.Counter = collections.Counter()
    total = 0
    for stack, n in got["stacks"].items():
        frames = [_short(f) for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        for name, marker in STAGES.items():
            if any(f.startswith(marker) for f in frames):
                stages[name] += n
    print(f"\n== {level} stream(s): {tokens} tokens, {got['row']['tok_per_s']:.1f} tok/s, "
          f"{total * per_token:.2f} ms of Python-visible CPU per token ==")  # fmt: skip
    print("stage (inclusive)                 ms/token")
    for name in STAGES:
        print(f"  {name:<30} {stages[name] * per_token:8.3f}")
    print(f"top {args.top} functions (self)")
    for frame, n in own.most_common(args.top):
        print(f"  {n * per_token:8.3f}  {frame}")


def _short(frame: str) -> str:
    """`fn (path/to/site-packages/pkg/mod.py:12)` -> `fn (pkg/mod.py:12)`."""
    name, _, where = frame.partition(" (")
    for cut in ("site-packages/", "/src/"):
        if cut in where:
            where = where.split(cut, 1)[1]
    return f"{name} ({where}"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--src", default="src", help="the chatd source tree to profile")
    ap.add_argument("--levels", default="1,8")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    ap.add_argument("--serve-args", default="", help="more `chatd serve` flags, one string")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--log", default="/tmp/chatd-profile.log")
    args = ap.parse_args()
    port = free_port()
    cmd = [sys.executable, "-m", "chatd", "serve", "--port", str(port), "--model", args.model,
           "--pull", "never", "--cache-url", "off", *args.serve_args.split()]  # fmt: skip
    os.environ["PYTHONPATH"] = str(Path(args.src).resolve())
    with serving("chatd", cmd, port, Path(args.log)) as (url, pid):
        asyncio.run(run_levels(url, [1], 1, 8))  # warm-up, not profiled
        for level in (int(c) for c in args.levels.split(",")):
            report(level, profile_level(pid, url, level, args), args)


if __name__ == "__main__":
    main()
