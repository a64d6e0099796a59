"""The transformers runner against the llama.cpp runner, on SmolLM2-135M, in one run.

    python -m benchmarks.runners [--levels 1,8,32] [--rounds 2] [--max-tokens 128]

Two chatd servers on the same packaged GGUF: one on llama.cpp (Q4_1), one on transformers
(the same weights dequantised; float32 unless --dtype says otherwise). Both stay up; each level
runs on one at a time, in alternating order over the rounds, so drift on a shared machine hits
both alike. Writes the ratios into benchmarks/README.md (section `runners`).
"""

from __future__ import annotations

import argparse
import asyncio
from contextlib import ExitStack
from typing import Any

from benchmarks.load import alternating, format_table, print_progress, run_levels
from benchmarks.vs_llama_server import (
    CACHE,
    ROOT,
    default_gguf,
    free_port,
    serving,
    wait_quiet,
    write_readme,
)

RUNNERS = ("llamacpp", "transformers")


def markdown(rows: dict[str, list[dict[str, Any]]], args) -> str:
    lines = [
        f"SmolLM2-135M-Instruct, chatd `--parallel {args.parallel} --threads {args.threads}`,"
        f" max_tokens {args.max_tokens}, temperature 0, {args.rounds} alternating rounds per"
        " level; llama.cpp runs the Q4_1 GGUF, transformers the same weights dequantised"
        f" ({args.dtype}, CPU).",
        "",
        "| concurrency | llama.cpp tok/s | transformers tok/s | transformers / llama.cpp |"
        " llama.cpp ITL p50 ms | transformers ITL p50 ms | TTFT p50 ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for a, b in zip(rows["llamacpp"], rows["transformers"], strict=True):
        ttft = b["ttft_p50_s"] / a["ttft_p50_s"] if a["ttft_p50_s"] else float("nan")
        lines.append(
            f"| {a['concurrency']} | {a['tok_per_s']:.1f} | {b['tok_per_s']:.1f} |"
            f" {b['tok_per_s'] / a['tok_per_s']:.2f} | {1000 * a['itl_p50_s']:.1f} |"
            f" {1000 * b['itl_p50_s']:.1f} | {ttft:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--parallel", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", help="the transformers runner's --dtype")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--requests-per-level", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=2, help="alternating runs of each per level")
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    wait_quiet(600)
    with ExitStack() as stack:
        servers = {}
        for runner in RUNNERS:
            port = free_port()
            cmd = [str(ROOT / ".venv" / "bin" / "chatd"), "serve", "--model", default_gguf(),
                   "--port", str(port), "--parallel", str(args.parallel),
                   "--threads", str(args.threads), "--ctx", "1024", "--runner", runner,
                   "--cache-url", "off"]  # fmt: skip
            if runner == "transformers":
                cmd += ["--dtype", args.dtype]
            log = CACHE / f"runners-{runner}.log"
            servers[runner] = stack.enter_context(serving(runner, cmd, port, log, timeout=600))

        def on(runner: str):
            url, pid = servers[runner]
            return lambda level: asyncio.run(
                run_levels(url, [level], args.requests_per_level, args.max_tokens,
                           server_pid=pid, on_level=print_progress)
            )  # fmt: skip

        rows = alternating(levels, args.rounds, {runner: on(runner) for runner in RUNNERS})
    for runner, table in rows.items():
        print(f"\n{runner}\n{format_table(table)}")
    section = markdown(rows, args)
    print(f"\n{section}")
    if not args.no_readme:
        write_readme(section, marker="runners")


if __name__ == "__main__":
    main()
