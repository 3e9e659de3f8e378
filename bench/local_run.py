"""How long `jobset-runtime local run` takes to bring a JobSet of N trivial pods
(`true`) from start to Completed, beside a baseline measured in the same run:
spawning and reaping N plain `true` processes with subprocess.

    sudo python bench/local_run.py [--pods 64 256] [--mode netns|loopback] [--repeat 3]

Prints one row per size: the runner's wall time (CLI process start to exit,
median of --repeat), the baseline's, and their ratio.  Goal: 64 pods < 10 s on
2 cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import Results, Stat  # noqa: E402


def jobset(pods: int) -> dict:
    per_job = 8 if pods % 8 == 0 else 1
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": {"name": "bench"},
        "spec": {"replicatedJobs": [{
            "name": "w", "replicas": pods // per_job,
            "template": {"spec": {"parallelism": per_job, "completions": per_job, "template": {"spec": {
                "containers": [{"name": "c", "image": "ignored", "command": ["true"]}]}}}},
        }]},
    }


def time_runner(pods: int, mode: str, workdir: str) -> float:
    path = os.path.join(workdir, f"bench-{pods}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(jobset(pods), f)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "jobset_runtime.local.cli", "run", path, "--mode", mode,
                        "--run-dir", os.path.join(workdir, f"run-{pods}-{time.time_ns()}"), "--timeout", "300"],
                       env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"the run of {pods} pods failed (rc {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return elapsed


def time_baseline(pods: int) -> float:
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["true"]) for _ in range(pods)]
    for p in procs:
        p.wait()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--mode", default="netns", choices=("netns", "loopback"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    res = Results(__file__)
    with tempfile.TemporaryDirectory() as workdir:
        for n in args.pods:
            runner = [time_runner(n, args.mode, workdir) for _ in range(args.repeat)]
            base = [time_baseline(n) for _ in range(args.repeat)]
            res.add(f"local.run{n}", f"`jobset-runtime local run` ({args.mode} mode): a JobSet of {n} `true` pods, "
                    "CLI start to Completed", Stat.median(runner, "s"), spread=[Stat.max(runner, "s")],
                    baseline=Stat.median(base, "s"), baseline_what=f"{n} plain `true` processes spawned and reaped",
                    goal="< 10 s" if n == 64 else "")
    res.write()


if __name__ == "__main__":
    main()
