"""Open MPI 5's mpirun given the record-scale hostfile: 12,736 worker FQDNs, mapped without launching.

The hostfile is the product's (jobset_runtime.mpi.hostfile, Open MPI format, one slot per host);
`mpirun --do-not-launch --display map` maps one rank per host and prints the job map, which is checked
to hold every host, then exits without starting a daemon (PRRTE's dry run).  The same mpirun
without `--display map` says how much of it is the mapping and how much the printing.  Figures
(bench/results.py), per host count: wall time of that mpirun, beside the same mpirun on 16 hosts in
the same run, and the time per host beside the smallest size's, which says where it stops growing
linearly.  The version is checked first (`mpirun --version`, Open MPI 5).

    python bench/mpi_record_map.py [--hosts 1024,4096,12736] [--mpirun .venv/bin/mpirun]
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import Results, Stat  # noqa: E402

from jobset_runtime.mpi import hostfile as hf  # noqa: E402

SUB = "js-workers.default.svc.cluster.local"


def run_map(mpirun: str, n: int, tmp: str, timeout: float, display: bool = True) -> dict:
    hosts = [f"js-worker-0-{i}.{SUB}" for i in range(n)]
    path = os.path.join(tmp, f"hostfile-{n}")
    with open(path, "w") as f:
        f.write(hf.render(hf.entries(hosts, 1), "openmpi"))
    cmd = [mpirun, "--allow-run-as-root", "--do-not-launch", *(["--display", "map"] if display else []),
           "--hostfile", path, "-np", str(n), "true"]
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"hosts": n, "ok": False, "why": f"no answer within {timeout:g} s"}
    wall = time.perf_counter() - t
    mapped = len(re.findall(r"^Data for node: ", p.stdout, re.M))
    ranks = len(re.findall(r"App rank: \d+", p.stdout))
    ok = p.returncode == 0 and (not display or (mapped == n and ranks == n))
    return {"hosts": n, "display": display, "ok": ok, "rc": p.returncode,
            "wall_s": round(wall, 3), "nodes_in_map": mapped, "ranks_in_map": ranks,
            "map_bytes": len(p.stdout), "stderr_tail": p.stderr[-300:]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", default="1024,4096,12736")
    ap.add_argument("--mpirun", default=shutil.which("mpirun") or ".venv/bin/mpirun")
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args(argv)
    res = Results(__file__, sys.argv[1:] if argv is None else argv)
    version = subprocess.run([args.mpirun, "--version"], capture_output=True, text=True).stdout
    impl = hf.parse_version(version)
    if impl.family != "openmpi" or impl.version[:1] != (5,):
        raise SystemExit(f"{args.mpirun} is {impl.family} {impl.version}: this bench needs Open MPI 5")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for display in (True, False):
            base = run_map(args.mpirun, 16, tmp, args.timeout, display)
            print(json.dumps(base), flush=True)
            runs.append(base)
            first = None  # the smallest size's run: the per-host figures' baseline
            for n in map(int, args.hosts.split(",")):
                r = run_map(args.mpirun, n, tmp, args.timeout, display)
                print(json.dumps(r), flush=True)
                runs.append(r)
                how = "--do-not-launch --display map" if display else "--do-not-launch (no map printed)"
                name = f"mpi.record_map{'' if display else '.quiet'}.hosts{n}"
                if not r["ok"]:
                    res.note(f"{n} hosts, `{how}`: did not finish: {r.get('why') or r.get('stderr_tail')}")
                    continue
                base_stat = Stat.single(base["wall_s"], "s") if base["ok"] else None
                res.add(name, f"{version.splitlines()[0]} `mpirun {how}` given the product's hostfile of {n:,} "
                        "worker FQDNs (one slot each): wall time" + (" (the map checked: every host, every rank)"
                                                                     if display else ""),
                        Stat.single(r["wall_s"], "s"), baseline=base_stat,
                        baseline_what="the same mpirun on 16 hosts", goal="")
                if first is None:
                    first = r
                    continue
                res.add(f"{name}.per_host", f"the same, per host ({n:,} hosts): flat while it scales linearly",
                        Stat.single(r["wall_s"] / n * 1e3, "ms"),
                        baseline=Stat.single(first["wall_s"] / first["hosts"] * 1e3, "ms"),
                        baseline_what=f"the same at {first['hosts']:,} hosts, per host")
    res.write()
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
