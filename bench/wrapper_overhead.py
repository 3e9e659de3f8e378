"""How much `jobset-run` adds in front of a command: `jobset-run --wait none -- true` against `true`.

Target: under 100 ms. Both are timed in the same run, interleaved, so machine noise hits both alike.
Run: .venv/bin/python bench/wrapper_overhead.py [--runs N]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POD = {
    "JOBSET_RUNTIME_JOBSET_NAME": "bench", "JOBSET_RUNTIME_REPLICATED_JOB": "worker",
    "JOBSET_RUNTIME_JOB_INDEX": "0", "JOB_COMPLETION_INDEX": "1", "JOBSET_RUNTIME_NAMESPACE": "default",
    "JOBSET_RUNTIME_TOPOLOGY": "worker:1x2",
}


def wrapper() -> list[str]:
    script = Path(sys.executable).parent / "jobset-run"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from jobset_runtime.cli import run_main; sys.exit(run_main())"]


def timed(argv, env) -> float:
    t = time.perf_counter()
    subprocess.run(argv, env=env, check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args()
    env = {**os.environ, **POD, "PYTHONPATH": str(ROOT)}
    true = shutil.which("true")
    bare, wrapped = [], []
    cmd = wrapper() + ["--wait", "none", "--", true]
    for _ in range(3):  # warm the page cache
        timed(cmd, env)
    for _ in range(args.runs):
        bare.append(timed([true], env))
        wrapped.append(timed(cmd, env))
    b, w = statistics.median(bare), statistics.median(wrapped)
    print(f"true                           median {b * 1e3:7.1f} ms  (baseline)")
    print(f"jobset-run --wait none -- true median {w * 1e3:7.1f} ms  p90 {sorted(wrapped)[int(0.9 * len(wrapped))] * 1e3:.1f} ms")
    print(f"overhead                       {(w - b) * 1e3:7.1f} ms  (target < 100 ms) over {args.runs} runs")


if __name__ == "__main__":
    main()
