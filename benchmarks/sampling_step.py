"""CPU time of one step's sampling over a SmolLM2-sized vocabulary, per source tree.

    python -m benchmarks.sampling_step --tree before=/tmp/before/src --tree after=src

For each tree (a `src` folder; each runs in its own process) and each case (rows, params),
the process CPU time of sampling one step: `sample_step` where the tree has it, else
`adjust_logits` + `choose` row by row. The logits sit in a ctypes buffer as llama.cpp's do,
peaked like a model's. CPU time, not wall time: less disturbed by what else runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

VOCAB = 49152
CASES = [  # rows, SamplingParams keywords
    (1, {"temperature": 0}),
    (1, {"temperature": 0.8}),
    (1, {"temperature": 0.8, "top_p": 0.95}),
    (1, {"temperature": 0.8, "top_k": 40}),
    (8, {"temperature": 0}),
    (8, {"temperature": 0.8}),
    (8, {"temperature": 0.8, "top_p": 0.95}),
    (8, {"temperature": 0.8, "top_k": 40}),
]


def measure(reps: int) -> None:
    """In the tree's own process: one line per case, microseconds of CPU per step."""
    import ctypes
    import time

    import numpy as np

    from chatd.engine import sampler
    from chatd.engine.types import SamplingParams

    for rows, kw in CASES:
        buf = (ctypes.c_float * (rows * VOCAB))()
        logits = np.ctypeslib.as_array(buf).reshape(rows, VOCAB)
        logits[:] = np.random.default_rng(0).standard_normal((rows, VOCAB)) * 3
        logits[:, :5] += 12  # a few likely tokens over a long tail
        params = SamplingParams(**kw)
        states = [sampler.SamplerState(params, [1, 2, 3]) for _ in range(rows)]
        start = time.process_time()
        for _ in range(reps):
            if hasattr(sampler, "sample_step"):
                sampler.sample_step(logits, states, [None] * rows)
            else:
                for row, state in zip(logits, states, strict=True):
                    sampler.choose(sampler.adjust_logits(row, state), params, state.rng)
        print((time.process_time() - start) / reps * 1e6, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tree", action="append", required=True, help="NAME=path/to/src")
    ap.add_argument("--reps", type=int, default=60)
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    got = {}
    for name, src in trees.items():
        cmd = [sys.executable, "-c", "import sys; sys.path[:0] = sys.argv[1:3]; "
               "from benchmarks.sampling_step import measure; measure(int(sys.argv[3]))",
               src, ".", str(args.reps)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        got[name] = [float(x) for x in out.split()]
    first = next(iter(trees))
    print(f"{'rows':>4}  {'params':<36}" + "".join(f"{n:>14}" for n in trees) + "  (us CPU/step)")
    for i, (rows, kw) in enumerate(CASES):
        cells = "".join(f"{got[n][i]:9.0f} {got[n][i] / got[first][i]:4.2f}x" for n in trees)
        print(f"{rows:>4}  {str(kw):<36}{cells}")


if __name__ == "__main__":
    main()
