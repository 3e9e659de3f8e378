"""Launcher start to mpirun exec for 1,024 workers: the launcher's own cost, without pods.

Set-up, on loopback in one process (bench/mpi_launcher_local.py measures the same
on the local JobSet runner, with a pod per worker):
  - the embedded DNS server (jobset_runtime/local/dns.py) serves the 1,024 worker
    FQDNs, each at its own 127.x.y.z address;
  - one WorkerServer (the real worker code, with the real handshake) listens on
    0.0.0.0 and so answers for every address, one thread per launcher connection;
  - the launcher runs in this process (launcher.run) with `--mpi openmpi`, and
    "mpirun" is a script that records when it was exec'd and exits 0.
Figure: from launcher.run() entry to mpirun's exec, split into its phases (DNS +
port wait, the 1,024 authenticated watch channels, hostfile + env).  Baseline,
same run: peers.wait_for_hosts alone for the same names and port, the part any
launcher that waits for its workers pays.

    python bench/mpi_launcher_start.py [--workers 1024] [--runs 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import Results, Stat  # noqa: E402

from jobset_runtime import contract  # noqa: E402
from jobset_runtime.identity import PodMetadata, derive  # noqa: E402
from jobset_runtime.local.dns import DnsServer  # noqa: E402
from jobset_runtime.mpi import channel, launcher  # noqa: E402
from jobset_runtime.mpi.worker import WorkerServer  # noqa: E402
from jobset_runtime.peers import wait_for_hosts  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    logging.basicConfig(level=logging.WARNING)

    tmp = Path(tempfile.mkdtemp())
    token = tmp / "token"
    token.write_bytes(os.urandom(16).hex().encode())
    mpirun = tmp / "mpirun"
    stamp = tmp / "exec"
    # It answers `--version` as Open MPI 5 does: the launcher checks which MPI it was given.
    mpirun.write_text(f"#!{sys.executable}\nimport sys, time\n"
                      "if sys.argv[1:] == ['--version']:\n    print('mpirun (Open MPI) 5.0.11')\n    sys.exit(0)\n"
                      f"open({str(stamp)!r}, 'w').write(repr(time.monotonic()))\n")
    mpirun.chmod(0o755)

    js, ns, n = "js", "default", a.workers
    env = {
        "JOBSET_RUNTIME_JOBSET_NAME": js, "JOBSET_RUNTIME_REPLICATED_JOB": "launcher",
        "JOBSET_RUNTIME_JOB_INDEX": "0", "JOBSET_RUNTIME_POD_INDEX": "0", "JOBSET_RUNTIME_NAMESPACE": ns,
        "JOBSET_RUNTIME_TOPOLOGY": f"worker:1x{n},launcher:1x1",
    }
    identity = derive(PodMetadata(env=env))
    hosts = launcher.worker_hosts(identity, "worker")
    key = channel.derive_key(token.read_bytes())

    with DnsServer(zones=["svc.cluster.local"]) as dns:
        for i, h in enumerate(hosts):
            dns.set(identity.fqdn(h), f"127.{1 + i // 65536}.{(i // 256) % 256}.{1 + i % 250}")
        os.environ.update({contract.MPI_TOKEN_FILE_ENV: str(token), contract.NAMESERVERS_ENV: dns.nameserver})
        totals, phases, bases = [], [], []
        for _ in range(a.runs):
            # Baseline and launcher each against a fresh server: a server that just served
            # 1,024 probes in this process is still busy with their threads.
            server = WorkerServer(key, pod="many", address="0.0.0.0", port=0).start()
            t = time.monotonic()
            wait_for_hosts([identity.fqdn(h) for h in hosts], port=server.port, timeout=60, progress_interval=None)
            bases.append(time.monotonic() - t)
            server.close()
            time.sleep(1.0)
            server = WorkerServer(key, pod="many", address="0.0.0.0", port=0).start()
            os.environ[contract.MPI_PORT_ENV] = str(server.port)
            marks = {}
            # The stub starts no MPI daemon: an explicit -n, so the launcher does not expect one on every worker.
            opts = launcher.Options(program=["/bin/true"], mpirun_args=["-n", "1"], mpi="openmpi",
                                    mpirun=str(mpirun), slots=8, timeout=120)
            code = launcher.run(opts, identity, marks=marks)
            assert code == 0, code
            exec_at = float(stamp.read_text())
            totals.append(exec_at - marks["start"])
            phases.append((marks["peers"] - marks["start"], marks["channels"] - marks["peers"],
                           marks["exec"] - marks["channels"], exec_at - marks["exec"]))
            assert server.watchers == n and server.wait(10).code == 0
            server.close()
    res = Results(__file__)
    where = f"{n} workers, in one process on loopback (embedded DNS, one real WorkerServer)"
    res.add(f"mpi.launcher_start{n}", f"MPI launcher, {where}: launcher start -> mpirun exec",
            Stat.median(totals, "s"), spread=[Stat.max(totals, "s")], baseline=Stat.median(bases, "s"),
            baseline_what="`peers.wait_for_hosts` alone for the same names and port")
    for i, phase in enumerate(("DNS + port wait", f"{n} authenticated watch channels (the WorkerServer shares the "
                               "launcher's interpreter: an upper bound)", "hostfile, agent, env",
                               "process start to exec")):
        res.add(f"mpi.launcher_start{n}.phase{i + 1}", f"MPI launcher, {where}, phase: {phase}",
                Stat.median([p[i] for p in phases], "s"))
    res.write()


if __name__ == "__main__":
    main()
