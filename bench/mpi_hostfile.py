"""Hostfile generation for 12,736 hosts (the size of a large TPU/GPU JobSet), per format.

Figure: render + atomic write (temp file, fsync, rename) of the hostfile, by FQDN,
for Open MPI (`host slots=N`) and MPICH (`host:N`).  Baseline, same run: joining
the same names and writing them with a plain open().write() (no fsync, not atomic).

    python bench/mpi_hostfile.py [--hosts 12736] [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import Results, Stat  # noqa: E402

from jobset_runtime.files import write_atomic  # noqa: E402
from jobset_runtime.identity import Topology  # noqa: E402
from jobset_runtime.mpi import hostfile as hf  # noqa: E402


def timed(fn, runs):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return Stat.median(times, "s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=12736)
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args()
    res = Results(__file__)
    topo = Topology.parse(f"worker:{a.hosts // 8}x8,launcher:1x1")
    names = [f"{h}.js.default.svc.cluster.local" for h in topo.hostnames("js") if "-worker-" in h][: a.hosts]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "hostfile")

        def baseline():
            with open(path + ".plain", "w") as f:
                f.write("\n".join(names) + "\n")

        base = timed(baseline, a.runs)
        print(f"hosts: {len(names)}")
        for family in (hf.OPENMPI, hf.MPICH):
            render = timed(lambda: hf.render(hf.entries(names, 8), family), a.runs)
            full = timed(lambda: write_atomic(path, hf.render(hf.entries(names, 8), family)), a.runs)
            res.add(f"hostfile.{family}.render", f"{family} hostfile of {len(names):,} hosts: render", render)
            res.add(f"hostfile.{family}", f"{family} hostfile of {len(names):,} hosts: render + atomic write "
                    "(temp file, fsync, rename)", full, baseline=base,
                    baseline_what="join + plain write of the same names (no fsync, not atomic)")
    res.write()


if __name__ == "__main__":
    main()
