"""Constrained against free decoding on one chatd, in one run: what grammar masks cost.

    python -m benchmarks.constrained [--levels 1,8] [--max-tokens 128]

The constrained requests ask for a JSON object whose one long string field holds the answer,
so both kinds run to max_tokens and every constrained token pays for a mask. Writes the
ratios into benchmarks/README.md (section `constrained`).
"""

from __future__ import annotations

import argparse
import asyncio
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

ESSAY = {
    "type": "json_schema",
    "json_schema": {
        "name": "essay",
        "schema": {
            "type": "object",
            # minLength keeps the model writing until max_tokens, as the free requests do.
            "properties": {"essay": {"type": "string", "minLength": 2000}},
            "required": ["essay"],
        },
    },
}


def markdown(free: list[dict[str, Any]], constrained: list[dict[str, Any]], args) -> str:
    lines = [
        f"chatd `--parallel {args.parallel}`, max_tokens {args.max_tokens},"
        " temperature 0,"
        f" {args.rounds} alternating rounds per level;"
        " constrained = `response_format` json_schema"
        " (one string field of at least 2000 characters).",
        "",
        "| concurrency | free tok/s | constrained tok/s | constrained / free | free ITL p50 ms |"
        " constrained ITL p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    for f, c in zip(free, constrained, strict=True):
        lines.append(
            f"| {f['concurrency']} | {f['tok_per_s']:.1f} | {c['tok_per_s']:.1f} |"
            f" {c['tok_per_s'] / f['tok_per_s']:.2f} | {1000 * f['itl_p50_s']:.1f} |"
            f" {1000 * c['itl_p50_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--levels", default="1,8")
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--requests-per-level", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=4, help="alternating runs of each kind per level")
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    port = free_port()
    cmd = [str(ROOT / ".venv" / "bin" / "chatd"), "serve", "--model", default_gguf(),
           "--port", str(port), "--parallel", str(args.parallel), "--threads", "2",
           "--cache-url", "off"]  # fmt: skip
    wait_quiet(600)
    with serving("chatd", cmd, port, CACHE / "constrained-chatd.log") as (url, pid):

        def with_body(extra: dict[str, Any] | None):
            return lambda level: asyncio.run(
                run_levels(url, [level], args.requests_per_level, args.max_tokens,
                           server_pid=pid, on_level=print_progress, extra_body=extra)
            )  # fmt: skip

        kinds = {"free": None, "constrained": {"response_format": ESSAY}}
        rows = alternating(levels, args.rounds, {k: with_body(e) for k, e in kinds.items()})
    for kind, table in rows.items():
        print(f"\n{kind}\n{format_table(table)}")
    section = markdown(rows["free"], rows["constrained"], args)
    print(f"\n{section}")
    if not args.no_readme:
        write_readme(section, marker="constrained")


if __name__ == "__main__":
    main()
