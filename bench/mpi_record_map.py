"""Open MPI 5's mpirun given the record-scale hostfile: 12,736 worker FQDNs, mapped without launching.

The hostfile is the product's (jobset_runtime.mpi.hostfile, Open MPI format, one slot per host);
`mpirun --do-not-launch --display map` maps one rank per host and prints the job map, which is checked
to hold every host, then exits without starting a daemon (PRRTE's dry run).  Figure: wall time of
that mpirun per host count, to see how it grows; baseline in the same run: the same mpirun on 16
hosts.  The version is checked first (`mpirun --version`, Open MPI 5).

    PYTHONPATH=. python bench/mpi_record_map.py [--hosts 1024,4096,12736] [--mpirun .venv/bin/mpirun]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobset_runtime.mpi import hostfile as hf  # noqa: E402

SUB = "js-workers.default.svc.cluster.local"


def run_map(mpirun: str, n: int, tmp: str, timeout: float) -> dict:
    hosts = [f"js-worker-0-{i}.{SUB}" for i in range(n)]
    path = os.path.join(tmp, f"hostfile-{n}")
    with open(path, "w") as f:
        f.write(hf.render(hf.entries(hosts, 1), "openmpi"))
    cmd = [mpirun, "--allow-run-as-root", "--do-not-launch", "--display", "map", "--hostfile", path,
           "-np", str(n), "true"]
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"hosts": n, "ok": False, "why": f"no answer within {timeout:g} s"}
    wall = time.perf_counter() - t
    mapped = len(re.findall(r"^Data for node: ", p.stdout, re.M))
    ranks = len(re.findall(r"App rank: \d+", p.stdout))
    return {"hosts": n, "ok": p.returncode == 0 and mapped == n and ranks == n, "rc": p.returncode,
            "wall_s": round(wall, 3), "nodes_in_map": mapped, "ranks_in_map": ranks,
            "map_bytes": len(p.stdout), "stderr_tail": p.stderr[-300:]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", default="1024,4096,12736")
    ap.add_argument("--mpirun", default=shutil.which("mpirun") or ".venv/bin/mpirun")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    version = subprocess.run([args.mpirun, "--version"], capture_output=True, text=True).stdout
    impl = hf.parse_version(version)
    if impl.family != "openmpi" or impl.version[:1] != (5,):
        raise SystemExit(f"{args.mpirun} is {impl.family} {impl.version}: this bench needs Open MPI 5")
    report = {"bench": "mpi_record_map", "mpirun": version.splitlines()[0], "loadavg": os.getloadavg(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in [16, *map(int, args.hosts.split(","))]:
            r = run_map(args.mpirun, n, tmp, args.timeout)
            report["runs"].append(r)
            print(json.dumps(r), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if all(r["ok"] for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
