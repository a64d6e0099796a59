"""Where a streaming chatd spends its Python time, per completion token: a sampling profiler
inside a live server.

    python -m benchmarks.profile [--src src] [--levels 1,8] [--requests 8] [--max-tokens 48] \\
        [--temperature 0.8] [--serve-args "--threads 1"] [--top 15]

Starts chatd (imported from --src) with a thread that samples every other thread's Python
stack (`sys._current_frames`) --rate times a second (py-spy would do, but it needs ptrace,
which these containers refuse). For each level it runs `benchmarks.load` against the server
and prints the stages of a token (inclusive) and the functions with the most samples of their
own, each as milliseconds per completion token (samples / rate / tokens). A thread waiting
(a lock, the event loop's select) is not counted; time inside llama.cpp shows as the Python
line that called it. Compare two trees by running it on each.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import sys
import threading
import time
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


# Leaf frames of a thread that waits rather than works.
# uvloop runs in C under asyncio's `run`: a bare `run` leaf is the loop in epoll (or in
# httptools' and uvloop's own C code, which this cannot see).
IDLE = ("wait (threading.py", "select (selectors.py", "run (asyncio/runners.py",
        "_worker (concurrent/futures/thread.py")  # fmt: skip


def profile_level(pid: int, url: str, level: int, args: argparse.Namespace) -> dict:
    out = Path(args.stacks)
    out.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)  # start counting afresh
    body = {"temperature": args.temperature}
    [row] = asyncio.run(
        run_levels(url, [level], args.requests, args.max_tokens, warmup=False, extra_body=body)
    )
    os.kill(pid, signal.SIGUSR2)  # write what was counted
    while not out.exists():
        time.sleep(0.1)
    time.sleep(0.5)
    return {"row": row, "stacks": read_raw(out)}


def read_raw(path: Path) -> collections.Counter:
    """Collapsed stacks: `frame;frame;...;leaf count` per line."""
    stacks: collections.Counter = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            stacks[stack] += int(count)
    return stacks


def sampled_serve(out: str, rate: int, argv: list[str]) -> None:
    """`chatd serve argv` with the sampler thread (SIGUSR1: reset, SIGUSR2: write to out)."""
    stacks: collections.Counter = collections.Counter()

    def sample_forever() -> None:
        me = threading.get_ident()
        while True:
            time.sleep(1 / rate)
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                names = []
                while frame is not None:
                    code = frame.f_code
                    names.append(f"{code.co_name} ({code.co_filename}:{frame.f_lineno})")
                    frame = frame.f_back
                stacks[";".join(reversed(names))] += 1

    def write(*_) -> None:
        text = "".join(f"{stack} {n}\n" for stack, n in list(stacks.items()))
        Path(out + ".tmp").write_text(text)
        os.replace(out + ".tmp", out)

    # A thread holding the GIL gives it up to the sampler only after this long, or when it
    # blocks: at Python's 5 ms the sampler would mostly find threads at their blocking calls.
    sys.setswitchinterval(1e-4)
    signal.signal(signal.SIGUSR1, lambda *_: stacks.clear())
    signal.signal(signal.SIGUSR2, write)
    threading.Thread(target=sample_forever, daemon=True, name="sampler").start()
    from chatd.cli import app

    sys.argv = ["chatd", "serve", *argv]
    app()


def report(level: int, got: dict, args: argparse.Namespace) -> None:
    tokens = max(1, got["row"]["completion_tokens"])
    per_token = 1e3 / args.rate / tokens  # ms of one core per sample, per token
    own: collections.Counter = collections.Counter()
    stages: collections.Counter = collections.Counter()
    total = 0
    for stack, n in got["stacks"].items():
        frames = [_short(f) for f in stack.split(";")]
        if frames[-1].startswith(IDLE):
            continue
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
    """`fn (.../site-packages/pkg/mod.py:12)` -> `fn (pkg/mod.py:12)`; the standard library's
    `fn (.../python3.11/asyncio/events.py:84)` -> `fn (asyncio/events.py:84)`."""
    name, _, where = frame.partition(" (")
    for cut in ("site-packages/", "/src/", "/python3.11/", "/python3.12/", "/python3.13/"):
        if cut in where:
            where = where.split(cut, 1)[1]
            break
    return f"{name} ({where}"


def main() -> None:
    if sys.argv[1:2] == ["_serve"]:  # the server's own process: python -m benchmarks.profile _serve
        sampled_serve(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
        return
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--src", default="src", help="the chatd source tree to profile")
    ap.add_argument("--levels", default="1,8")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--rate", type=int, default=200, help="samples per second")
    ap.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    ap.add_argument("--serve-args", default="", help="more `chatd serve` flags, one string")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--log", default="/tmp/chatd-profile.log")
    ap.add_argument("--stacks", default="/tmp/chatd-profile-stacks.txt")
    args = ap.parse_args()
    port = free_port()
    serve = ["--port", str(port), "--model", args.model, "--pull", "never", "--cache-url", "off",
             *args.serve_args.split()]  # fmt: skip
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.profile",
        "_serve",
        args.stacks,
        str(args.rate),
        *serve,
    ]
    # The server imports chatd from --src, and this package from here.
    here = Path(__file__).resolve().parent.parent
    os.environ["PYTHONPATH"] = f"{Path(args.src).resolve()}:{here}"
    with serving("chatd", cmd, port, Path(args.log)) as (url, pid):
        asyncio.run(run_levels(url, [1], 1, 8))  # warm-up, not profiled
        for level in (int(c) for c in args.levels.split(",")):
            report(level, profile_level(pid, url, level, args), args)


if __name__ == "__main__":
    main()
