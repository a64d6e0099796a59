"""chatd against chatd: the same load on two or more source trees, in alternating rounds.

    python -m benchmarks.ab --tree before=/tmp/before/src --tree after=src \\
        [--levels 1,8] [--rounds 3] [--requests 4] [--max-tokens 48] [--temperature 0.8] \\
        [--serve-args "--threads 1"]

For each level and round, each tree's server is started in turn (`load.alternating`: the
order reversed every other round), given the level's load and stopped. Per level it prints
each tree's pooled row with the server's CPU time per completion token, and its ratios to
the first tree's. On a shared machine the ratios say more than absolute numbers, and CPU
time per token is the least disturbed by what else runs (with `--threads 1` llama.cpp has
no barrier to spin at). A tree is a `src` folder, e.g. from
`git archive <commit> src | tar -x -C /tmp/before`. The response cache is off.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from benchmarks.load import alternating, format_table, process_cpu_seconds, run_levels
from benchmarks.vs_llama_server import free_port, serving


def contender(src: str, args: argparse.Namespace):
    """A level -> the rows of one run of it on a fresh server importing chatd from src."""

    def run(level: int) -> list[dict]:
        port = free_port()
        cmd = [sys.executable, "-m", "chatd", "serve", "--port", str(port), "--model", args.model,
               "--pull", "never", "--cache-url", "off", *args.serve_args.split()]  # fmt: skip
        os.environ["PYTHONPATH"] = str(Path(src).resolve())  # what the server imports
        with serving(f"chatd@{src}", cmd, port, Path(args.log)) as (url, pid):
            body = {"temperature": args.temperature}
            asyncio.run(run_levels(url, [1], 1, 8, server_pid=pid, extra_body=body))  # warm-up
            before = process_cpu_seconds(pid)
            rows = asyncio.run(
                run_levels(url, [level], args.requests, args.max_tokens, warmup=False,
                           server_pid=pid, extra_body=body)
            )  # fmt: skip
            rows[0]["server_cpu_s"] = process_cpu_seconds(pid) - before
        return rows

    return run


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tree", action="append", required=True, help="NAME=path/to/src")
    ap.add_argument("--levels", default="1,8")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=None, help="per run (load.py's default)")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    ap.add_argument("--serve-args", default="", help="more `chatd serve` flags, one string")
    ap.add_argument("--log", default="/tmp/chatd-ab.log")
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    levels = [int(c) for c in args.levels.split(",")]
    contenders = {name: contender(src, args) for name, src in trees.items()}
    rows = alternating(levels, args.rounds, contenders)
    for got in rows.values():
        for row in got:
            row["cpu_ms_per_token"] = row["server_cpu_s"] * 1e3 / max(1, row["completion_tokens"])
    first = next(iter(trees))
    for name, got in rows.items():
        print(f"\n{name} ({trees[name]})\n{format_table(got)}")
    print(f"\nratios to {first} (pooled over {args.rounds} rounds)")
    for i, level in enumerate(levels):
        base = rows[first][i]
        for name in trees:
            row = rows[name][i]
            print(f"C={level:<3} {name:>12}: tok/s {row['tok_per_s'] / base['tok_per_s']:.3f}x  "
                  f"ITL p50 {_ratio(row, base, 'itl_p50_s')}  "
                  f"CPU/token {_ratio(row, base, 'cpu_ms_per_token')}")  # fmt: skip


def _ratio(row: dict, base: dict, key: str) -> str:
    return f"{row[key] / base[key]:.3f}x" if row.get(key) and base.get(key) else "-"


if __name__ == "__main__":
    main()
