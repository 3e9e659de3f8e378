"""The network between two worker pods of the local runner, as `manifest mpi --bench pingpong` measures it.

The generated manifest (2 workers, 1 slot each, Open MPI 5 from the venv) runs on
`jobset-runtime local run`: rank 0 and rank 1 are on two pods, each in its own network
namespace, joined by veths and a bridge, so mpi4py's pingpong crosses the pod network
(Open MPI's TCP transport).  Baseline, same run: the same benchmark
(`python -m jobset_runtime.mpi.bench pingpong`) with both ranks in one process tree on
this machine (`mpirun -n 2`, shared memory), which no pod network can beat.

    sudo python bench/mpi_network_local.py [--max-size BYTES] [--loop N]

Prints both tables and, per size, the pod path's latency over the baseline's; records the
smallest size's latency and the largest size's bandwidth, each beside the baseline's, in a
results file (bench/results.py).  The baseline is shared memory, which no network can match: the
ratio says what crossing the pod network costs on this machine, not a fault of either path, and
on a busy machine both sides measure CPU contention first (the load is recorded with the run).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from results import Results, Stat  # noqa: E402

from jobset_runtime import manifests  # noqa: E402
from jobset_runtime.manifests.cli import dump_yaml  # noqa: E402
from jobset_runtime.mpi import bench  # noqa: E402

ROW = re.compile(r"^\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s*$")


def rows(lines) -> dict:
    out = {}
    for line in lines:
        m = ROW.match(line)
        if m:
            out[int(m.group(1))] = (float(m.group(2)), float(m.group(3)))
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--max-size", type=int, default=1 << 20)
    p.add_argument("--loop", type=int, default=1000)
    args = p.parse_args()
    res = Results(__file__)
    if os.geteuid() != 0:
        sys.exit("needs root: pods are network namespaces")
    venv_bin = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSET_RUNTIME_")}
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    bench_args = ["--max-size", str(args.max_size), "--loop", str(args.loop)]

    base = subprocess.run([str(venv_bin / "mpirun"), "--allow-run-as-root", "-n", "2", sys.executable, "-m",
                           "mpi4py", "-m", "jobset_runtime.mpi.bench", "pingpong", *bench_args],
                          env=env, capture_output=True, text=True, timeout=600)
    if base.returncode:
        sys.exit(f"baseline failed: {base.stderr[-2000:]}")

    docs = manifests.mpi(name="nb", image="unused", command=[], workers=2, bench="pingpong",
                         bench_max_size=args.max_size)
    for rj in docs[-1]["spec"]["replicatedJobs"]:
        if rj["name"] == "launcher":
            rj["template"]["spec"]["template"]["spec"]["containers"][0]["command"] += ["--loop", str(args.loop)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nb.yaml"
        path.write_text(dump_yaml(docs))
        run = subprocess.run([sys.executable, "-m", "jobset_runtime.local.cli", "run", str(path), "--run-dir",
                              str(Path(tmp) / "run"), "--timeout", "600"], env=env, capture_output=True, text=True,
                             timeout=660)
    if run.returncode:
        sys.exit(f"the JobSet failed: {run.stdout[-3000:]}")
    pods = [line.split("] ", 1)[1] for line in run.stdout.splitlines() if line.startswith("[nb-launcher-0-0-")]

    print("pod to pod (local runner, 2 worker pods):")
    print("\n".join(line for line in pods if line.startswith("#") or ROW.match(line) or "size" in line))
    print("baseline, same run (mpirun -n 2 on this machine, shared memory):")
    print(base.stdout.rstrip())
    a, b = rows(pods), rows(base.stdout.splitlines())
    print("\n" + bench.format_table(["pod path latency / baseline latency"], ("size [B]", "ratio"),
                                    [(str(n), f"{a[n][0] / b[n][0]:.1f}x") for n in sorted(a) if n in b and b[n][0]]))
    sizes = sorted(n for n in a if n in b)
    if not sizes:
        sys.exit("no size measured on both paths: see the tables above")
    small, large = sizes[0], sizes[-1]
    base_what = "the same pingpong, both ranks on this machine (`mpirun -n 2`, shared memory)"
    res.add("mpi.network.latency", f"mpi4py pingpong between 2 worker pods of the local runner (veths, a bridge, "
            f"Open MPI's TCP transport), {small} B messages: latency as mpi4py.bench pingpong reports it, mean of {args.loop} iterations",
            Stat.single(a[small][0], "us"), baseline=Stat.single(b[small][0], "us"), baseline_what=base_what)
    res.add("mpi.network.bandwidth", f"the same, {large} B messages: bandwidth",
            Stat.single(a[large][1], "MB/s"), baseline=Stat.single(b[large][1], "MB/s"), baseline_what=base_what)
    res.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
