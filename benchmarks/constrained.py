"""Constrained against free decoding on one chatd, in one run: what grammars cost, and what
fast-forward (the tokens a grammar forces, taken without sampling) gains.

    python -m benchmarks.constrained [--levels 1,8] [--max-tokens 256]

The constrained requests ask for records with fixed keys (names, ages, cities, roles, flags):
most of each answer is keys and punctuation the grammar forces, so a step often yields
several tokens. The free requests run to max_tokens (end tokens banned). Tokens per second
count completion tokens, forced ones included (they are in `usage` like any other). Writes the
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
from tests.conftest import NO_END  # SmolLM2's end tokens banned: free answers run to max_tokens

RECORD = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "maxLength": 16},
        "role": {"enum": ["administrator", "editor", "viewer"]},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "city", "role", "active"],
    "additionalProperties": False,
}
RECORDS = {
    "type": "json_schema",
    "json_schema": {
        "name": "people",
        "schema": {
            "type": "object",
            "properties": {
                "people": {"type": "array", "items": RECORD, "minItems": 5, "maxItems": 5}
            },
            "required": ["people"],
            "additionalProperties": False,
        },
    },
}


def markdown(free: list[dict[str, Any]], constrained: list[dict[str, Any]], args) -> str:
    lines = [
        f"chatd `--parallel {args.parallel}`, max_tokens {args.max_tokens},"
        " temperature 0,"
        f" {args.rounds} alternating rounds per level;"
        " constrained = `response_format` json_schema (5 records of 5 fixed keys; tokens the"
        " grammar forces are taken without sampling and counted), free = end tokens banned.",
        "",
        "| concurrency | free tok/s | constrained tok/s | constrained / free |"
        " constrained tokens per answer | free ITL p50 ms | constrained ITL p50 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for f, c in zip(free, constrained, strict=True):
        lines.append(
            f"| {f['concurrency']} | {f['tok_per_s']:.1f} | {c['tok_per_s']:.1f} |"
            f" {c['tok_per_s'] / f['tok_per_s']:.2f} | {c['tokens_per_request']:.0f} |"
            f" {_ms(f['itl_p50_s'])} | {_ms(c['itl_p50_s'])} |"
        )
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--levels", default="1,8")
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=256)
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

        kinds = {"free": {"logit_bias": NO_END}, "constrained": {"response_format": RECORDS}}
        rows = alternating(levels, args.rounds, {k: with_body(e) for k, e in kinds.items()})
    for kind, table in rows.items():
        print(f"\n{kind}\n{format_table(table)}")
    section = markdown(rows["free"], rows["constrained"], args)
    print(f"\n{section}")
    if not args.no_readme:
        write_readme(section, marker="constrained")


if __name__ == "__main__":
    main()
