"""Hostfile generation for 12,736 hosts (the size of a large TPU/GPU JobSet), per format.

Figure: render + atomic write (temp file, fsync, rename) of the hostfile, by FQDN,
for Open MPI (`host slots=N`) and MPICH (`host:N`).  Baseline, same run: joining
the same names and writing them with a plain open().write() (no fsync, not atomic).

    python bench/mpi_hostfile.py [--hosts 12736] [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobset_runtime.files import write_atomic  # noqa: E402
from jobset_runtime.identity import Topology  # noqa: E402
from jobset_runtime.mpi import hostfile as hf  # noqa: E402


def timed(fn, runs):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=12736)
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args()
    topo = Topology.parse(f"worker:{a.hosts // 8}x8,launcher:1x1")
    names = [f"{h}.js.default.svc.cluster.local" for h in topo.hostnames("js") if "-worker-" in h][: a.hosts]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "hostfile")

        def baseline():
            with open(path + ".plain", "w") as f:
                f.write("\n".join(names) + "\n")

        base = timed(baseline, a.runs)
        print(f"hosts: {len(names)}; median of {a.runs} runs")
        print(f"  baseline (join + plain write):          {base:7.2f} ms")
        for family in (hf.OPENMPI, hf.MPICH):
            render = timed(lambda: hf.render(hf.entries(names, 8), family), a.runs)
            full = timed(lambda: write_atomic(path, hf.render(hf.entries(names, 8), family)), a.runs)
            size = os.path.getsize(path)
            print(f"  {family:8s} render:                     {render:7.2f} ms")
            print(f"  {family:8s} render + atomic write:      {full:7.2f} ms  ({size / 1024:.0f} KiB, "
                  f"{full / base:.1f}x baseline)")


if __name__ == "__main__":
    main()
