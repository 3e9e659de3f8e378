"""Launcher start to mpirun exec for 1,024 workers, on the local JobSet runner.

The generated `mpi` manifest (1 launcher + N workers, 1 slot each, exec transport)
runs on `jobset-runtime local run`: every worker is a pod in its own network
namespace running the real `python -m jobset_runtime.mpi worker`, names come from
the runner's DNS server, and the launcher pod starts once the workers are Ready
(dependsOn), as on a cluster.  "mpirun" is a script given with `--mpirun`: it
answers `--version` as Open MPI 5 would, and when exec'd records, from the kernel's
start times of its parent and grandparent, how long

  - the launcher process (`python -m jobset_runtime.mpi launcher`) and
  - the launcher's container (`jobset-run --wait all`, then the launcher)

ran before it; then it exits 0 and the workers are told the run succeeded.
Baseline, same run and same pod: what the usual shell loop pays just to look the
workers up once, one getaddrinfo() per name through the pod's resolv.conf, one
after another (`for h in ...; do nslookup $h; done`); the launcher also waits for
each worker's port and opens an authenticated channel to each.

    sudo python bench/mpi_launcher_local.py [--workers 256]   (--workers 1024: the full size)

Needs root (network namespaces) and about 12 MB of memory per worker pod.  The default is
256 workers so that `./dev bench` fits on a small machine; 1,024 takes minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import Results, Stat  # noqa: E402

from jobset_runtime import manifests  # noqa: E402
from jobset_runtime.local.pods import netns_available  # noqa: E402

MB_PER_POD = 12  # measured: 11.3 MB per pod at 1,024 workers

STUB = '''#!{python}
import json, os, socket, sys, time
if sys.argv[1:] == ["--version"]:
    print("mpirun (Open MPI) 5.0.11")
    sys.exit(0)
now = time.clock_gettime(time.CLOCK_BOOTTIME)
tick = os.sysconf("SC_CLK_TCK")

def started(pid):
    stat = open(f"/proc/{{pid}}/stat").read()
    return int(stat.rsplit(")", 1)[1].split()[19]) / tick

def ppid(pid):
    return int(open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()[1])

launcher = os.getppid()
container = ppid(launcher)
names = {names!r}
t = time.monotonic()
for name in names:
    socket.getaddrinfo(name, None, socket.AF_INET)
baseline = time.monotonic() - t
json.dump({{"launcher": now - started(launcher), "container": now - started(container),
           "baseline": baseline}}, open({out!r}, "w"))
'''


def mem_available_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=256)
    a = ap.parse_args()
    ok, why = netns_available()
    if not ok:
        sys.exit(f"the local runner's network namespaces are unavailable here ({why}); run as root")
    need = a.workers * MB_PER_POD + 2048
    if mem_available_mb() < need:
        sys.exit(f"{a.workers} worker pods need about {need:,} MB of free memory; "
                 f"{mem_available_mb():,} MB are available: pass a smaller --workers")

    tmp = Path(tempfile.mkdtemp(prefix="bench-mpi-local-"))
    out = tmp / "result.json"
    names = [f"m-worker-0-{i}.m.default.svc.cluster.local" for i in range(a.workers)]
    stub = tmp / "mpirun"
    stub.write_text(STUB.format(python=sys.executable, names=names, out=str(out)))
    stub.chmod(0o755)
    # The stub starts no MPI daemon; an explicit -n tells the launcher not to expect one on every
    # worker (with -n of its own choosing it would fail the run: ranks placed, no daemon started).
    docs = manifests.mpi(name="m", image="unused", command=["-n", "1", "--", "true"], workers=a.workers,
                         slots_per_worker=1)
    for rj in docs[-1]["spec"]["replicatedJobs"]:
        if rj["name"] == "launcher":
            cmd = rj["template"]["spec"]["template"]["spec"]["containers"][0]["command"]
            at = cmd.index("launcher") + 1
            cmd[at:at] = ["--mpirun", str(stub)]
    path = tmp / "mpi.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))

    base = mem_available_mb()
    low = [base]
    done = threading.Event()

    def sample():
        while not done.wait(0.5):
            low[0] = min(low[0], mem_available_mb())

    threading.Thread(target=sample, daemon=True).start()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # The pods run `jobset-run` and `python` from this environment, as an image would provide them.
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "jobset_runtime.local.cli", "run", str(path), "--run-dir",
                        str(tmp / "run"), "--timeout", "900"], env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - t
    done.set()
    if r.returncode != 0 or not out.exists():
        sys.exit(f"the JobSet did not complete (rc {r.returncode}); logs in {tmp / 'run'}\n{r.stdout[-3000:]}")
    res = json.loads(out.read_text())
    shutil.rmtree(tmp, ignore_errors=True)
    peak = base - low[0]
    out = Results(__file__)
    where = f"{a.workers} worker pods on the local runner (network namespaces, embedded DNS, exec transport)"
    base = Stat.single(res["baseline"], "s")
    base_what = "one `getaddrinfo` per worker, one after another, in the launcher pod"
    out.add(f"mpi.launcher_local{a.workers}", f"MPI launcher, {where}: launcher process start -> mpirun exec",
            Stat.single(res["launcher"], "s"), baseline=base, baseline_what=base_what)
    out.add(f"mpi.launcher_local{a.workers}.container", f"MPI launcher, {where}: launcher container start "
            "(`jobset-run --wait all` first) -> mpirun exec", Stat.single(res["container"], "s"),
            baseline=base, baseline_what=base_what)
    out.add(f"mpi.launcher_local{a.workers}.whole", f"the whole JobSet of {a.workers} workers: runner start -> "
            "Completed", Stat.single(wall, "s"))
    out.add(f"mpi.launcher_local{a.workers}.memory", "peak memory per pod", Stat.single(peak / (a.workers + 1), "MB"))
    out.write()


if __name__ == "__main__":
    main()
