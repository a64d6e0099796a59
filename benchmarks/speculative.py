"""Speculative decoding on input-grounded work: chatd `--speculative ngram` against chatd
`--speculative off`, llama-server without speculation and llama-server with each of its n-gram
speculation types (its best taken), one stream, greedy; then free chat at a few concurrency
levels, chatd with drafts against chatd without.

    python -m benchmarks.speculative [--model PATH] [--rounds 2] [--max-tokens 160]
        [--free-levels 1,8,32] [--spec-types ngram-simple,ngram-map-k,...]

Input-grounded: the answer repeats much of its prompt (rewrite a given code snippet with a
small change, extract fields of a given text as JSON, answer by quoting a given passage), so
an n-gram lookup in the prompt drafts it. Each contender is started on its own, warmed up with
one request, and sent the workload's requests one after the other (a new connection each);
tok/s is completion tokens over the wall time of the workload. Contenders run in alternating
order from round to round. Ratios go into benchmarks/README.md between the `speculative`
markers; a smoke run (`--no-readme`) leaves it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.load import alternating, run_levels
from benchmarks.vs_llama_server import (
    CACHE,
    ROOT,
    build_llama_server,
    default_gguf,
    free_port,
    ratio,
    serving,
    wait_quiet,
    write_readme,
)

CODE = """def mean(values):
    total = 0
    for value in values:
        total += value
    return total / len(values)


def variance(values):
    m = mean(values)
    total = 0
    for value in values:
        total += (value - m) ** 2
    return total / len(values)
"""
TEXT = (
    "Order 4471 was placed by Maria Gonzalez on 12 March 2024. She lives at 18 Harbour Road, "
    "Bristol, and asked for delivery before Friday. The order holds two blue kettles at 24.50 "
    "each and one toaster at 39.00; payment was made by card."
)
PASSAGE = (
    "The lighthouse stood on a rock a mile from the shore. Every evening the keeper climbed "
    "the one hundred and twelve steps to light the lamp, and every morning he climbed them "
    "again to put it out. In winter the waves broke over the gallery, and the keeper wrote in "
    "his log that the tower shook like a tree in the wind."
)
WORKLOAD = [
    f"Rewrite this Python code so that the function `mean` is called `average`. "
    f"Give only the code.\n\n{CODE}",
    f"Rewrite this Python code with a docstring in each function. Give only the code.\n\n{CODE}",
    f"Extract the order number, customer name, city and items from this text as JSON.\n\n{TEXT}",
    f"Copy this text, replacing the name Maria Gonzalez with Ana Lopez.\n\n{TEXT}",
    f"Quote the sentence of this passage that says how many steps there are.\n\n{PASSAGE}",
    f"Repeat this passage word for word.\n\n{PASSAGE}",
]
LLAMA_SPEC_TYPES = ["ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod", "ngram-cache"]


def grounded(url: str, max_tokens: int) -> dict[str, Any]:
    """The workload, one request after another: completion tokens, wall time, tok/s."""
    body = {"temperature": 0, "max_tokens": max_tokens}

    def ask(prompt: str) -> int:
        # A new connection per request: llama-server may close kept-alive ones in between.
        r = httpx.post(
            f"{url}/v1/chat/completions",
            json={**body, "messages": [{"role": "user", "content": prompt}]},
            timeout=600,
        )
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    ask("Hello!")  # warm-up, not counted
    started = time.perf_counter()
    tokens = sum(ask(prompt) for prompt in WORKLOAD)
    wall = time.perf_counter() - started
    return {"completion_tokens": tokens, "wall_s": wall, "tok_per_s": tokens / wall}


def drafts(url: str) -> tuple[float, float]:
    """chatd's drafted and accepted token counters so far."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    found = {"chatd_draft_tokens_total": 0.0, "chatd_draft_accepted_tokens_total": 0.0}
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name in found:
            found[name] += float(line.rsplit(" ", 1)[1])
    return found["chatd_draft_tokens_total"], found["chatd_draft_accepted_tokens_total"]


def commands(args: argparse.Namespace) -> dict[str, list[str]]:
    """Every contender's command line, port included: one slot, the same context and threads."""
    chatd = [
        args.chatd, "serve", "--model", args.model, "--host", "127.0.0.1",
        "--parallel", str(args.parallel), "--ctx", str(args.ctx), "--threads", str(args.threads),
        "--cache-url", "off",
    ]  # fmt: skip
    out = {
        "chatd off": [*chatd, "--speculative", "off"],
        "chatd ngram": [*chatd, "--speculative", "ngram"],
    }
    if args.llama_server != "none":
        binary = args.llama_server or str(build_llama_server())
        llama = [
            binary, "-m", args.model, "-t", str(args.threads), "-np", str(args.parallel),
            "-c", str(args.ctx * args.parallel), "--no-kv-unified", "--host", "127.0.0.1",
        ]  # fmt: skip
        out["llama-server"] = llama
        for kind in args.spec_types.split(","):
            out[f"llama-server {kind}"] = [*llama, "--spec-type", kind]
    return {name: [*cmd, "--port", str(free_port())] for name, cmd in out.items()}


def run_grounded(cmds: dict[str, list[str]], args: argparse.Namespace) -> dict[str, dict]:
    """Each contender `rounds` times in alternating order; pooled tokens over pooled time."""
    names = list(cmds)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            cmd = cmds[name]
            port = int(cmd[cmd.index("--port") + 1])
            wait_quiet(args.wait_quiet)
            log = CACHE / f"speculative-{name.replace(' ', '-')}.log"
            with serving(name, cmd, port, log) as (url, _pid):
                row = grounded(url, args.max_tokens)
                if name.startswith("chatd"):
                    row["drafted"], row["accepted"] = drafts(url)
            print(f"{name}: {row['tok_per_s']:.1f} tok/s ({row['completion_tokens']} tokens)")
            runs[name].append(row)
    pooled = {}
    for name, got in runs.items():
        tokens = sum(r["completion_tokens"] for r in got)
        wall = sum(r["wall_s"] for r in got)
        row = {"completion_tokens": tokens, "wall_s": wall, "tok_per_s": tokens / wall}
        if name.startswith("chatd"):
            row["drafted"] = sum(r["drafted"] for r in got)
            row["accepted"] = sum(r["accepted"] for r in got)
        pooled[name] = row
    return pooled


def run_free(cmds: dict[str, list[str]], args: argparse.Namespace) -> dict[str, list[dict]]:
    """Free chat (benchmarks.load's prompts, temperature 0) at each level, chatd with and
    without drafts, alternating."""
    levels = [int(x) for x in args.free_levels.split(",") if x.strip()]
    if not levels:
        return {}
    parallel = max(levels)

    def contender(name: str):
        cmd = [*cmds[name]]
        cmd[cmd.index("--parallel") + 1] = str(parallel)
        port = int(cmd[cmd.index("--port") + 1])

        def run(level: int) -> list[dict[str, Any]]:
            wait_quiet(args.wait_quiet)
            log = CACHE / f"speculative-free-{name.replace(' ', '-')}.log"
            with serving(name, cmd, port, log) as (url, pid):
                return asyncio.run(
                    run_levels(url, [level], args.free_requests, args.max_tokens, server_pid=pid)
                )

        return run

    return alternating(levels, args.rounds, {n: contender(n) for n in ("chatd ngram", "chatd off")})


def markdown(
    grounded_rows: dict[str, dict],
    free_rows: dict[str, list[dict]],
    cmds: dict[str, list[str]],
    args: argparse.Namespace,
) -> str:
    ours = grounded_rows["chatd ngram"]["tok_per_s"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), model `{Path(args.model).name}`, "
        f"{len(WORKLOAD)} input-grounded requests one after another, greedy, max_tokens "
        f"{args.max_tokens}, {args.threads} threads, {args.rounds} rounds in alternating order "
        "(tokens over wall time, pooled).",
        "",
        "| contender | tok/s | chatd ngram / this | drafted | accepted |",
        "|---|---|---|---|---|",
    ]
    for name, row in grounded_rows.items():
        extra = f"{row['drafted']:.0f} | {row['accepted']:.0f}" if "drafted" in row else "- | -"
        lines.append(
            f"| {name} | {row['tok_per_s']:.1f} | {ratio(ours, row['tok_per_s'])} | {extra} |"
        )
    spec = {k: v for k, v in grounded_rows.items() if k.startswith("llama-server ")}
    if spec:
        best = max(spec, key=lambda k: spec[k]["tok_per_s"])
        lines += ["", f"llama-server's best n-gram type here: `{best.split(' ', 1)[1]}`."]
    if free_rows:
        lines += [
            "",
            "Free chat (benchmarks.load's prompts, temperature 0), chatd ngram / chatd off:",
            "",
            "| concurrency | tok/s ratio | ngram tok/s | off tok/s |",
            "|---|---|---|---|",
        ]
        for on, off in zip(free_rows["chatd ngram"], free_rows["chatd off"], strict=True):
            lines.append(
                f"| {on['concurrency']} | {ratio(on['tok_per_s'], off['tok_per_s'])} "
                f"| {on['tok_per_s']:.1f} | {off['tok_per_s']:.1f} |"
            )
    lines += ["", "Commands:", ""]
    for name, cmd in cmds.items():
        shown = ["GGUF" if x == args.model else x for x in cmd]
        shown[0] = Path(shown[0]).name
        shown[shown.index("--port") + 1] = "PORT"
        lines.append(f"- {name}: `{' '.join(shown)}`")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=None, help="GGUF (default: SmolLM2-135M Q4_1)")
    ap.add_argument("--parallel", type=int, default=1, help="slots of every contender")
    ap.add_argument("--ctx", type=int, default=1024, help="context per slot")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--spec-types", default=",".join(LLAMA_SPEC_TYPES))
    ap.add_argument("--free-levels", default="1,8,32", help="'' to skip the free-chat check")
    ap.add_argument("--free-requests", type=int, default=None)
    ap.add_argument("--chatd", default=str(ROOT / ".venv" / "bin" / "chatd"))
    ap.add_argument("--llama-server", default=None, help="binary, or 'none' to skip it")
    ap.add_argument("--wait-quiet", type=float, default=600.0)
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()
    args.model = args.model or default_gguf()
    if not shutil.which(args.chatd):
        sys.exit(f"chatd not found at {args.chatd}")
    CACHE.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    cmds = commands(args)
    grounded_rows = run_grounded(cmds, args)
    free_rows = run_free(cmds, args)
    section = markdown(grounded_rows, free_rows, cmds, args)
    print(section)
    if not args.no_readme:
        write_readme(section, marker="speculative")


if __name__ == "__main__":
    main()
