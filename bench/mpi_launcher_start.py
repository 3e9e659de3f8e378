"""Launcher start to mpirun exec at the record scale: 12,736 worker addresses, without pods.

Set-up, on loopback (bench/mpi_launcher_local.py measures the launcher on the local JobSet
runner, with a pod per worker, at smaller sizes):
  - the embedded DNS server (jobset_runtime/local/dns.py), in a process of its own, serves
    the worker FQDNs, each at its own loopback address 127.x.y.z;
  - every worker address is a real WorkerServer (the worker's code, with the real handshake,
    admission and watch loop) bound to that address and the MPI port; they are spread over
    processes of --per-proc addresses each (one accept thread per process serves all its
    listeners, one thread per watch channel, as in a worker pod);
  - the launcher runs in this process (launcher.run) with `--mpi openmpi`, and "mpirun" is a
    script that records when it was exec'd, then stays --hold seconds, so that every watch
    channel carries the launcher's heartbeats for a while before `finish`.
Checked: every worker address got exactly one watch channel and ended with the launcher's
verdict (exit 0), none timed out waiting for heartbeats.
Figures (bench/results.py): launcher start -> mpirun exec, split into its phases (DNS + port
wait, the authenticated watch channels, hostfile + env, process start); the launcher's CPU
while mpirun runs (heartbeats to every worker, nothing else); its peak descriptors, threads
and memory.  Baseline, same run: peers.wait_for_hosts alone for the same names and port, the
part any launcher that waits for its workers pays.

    python bench/mpi_launcher_start.py [--workers 12736] [--per-proc 400] [--runs 1] [--hold 10]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import Results, Stat  # noqa: E402

from jobset_runtime import admission, contract  # noqa: E402
from jobset_runtime.addresses import free_port  # noqa: E402
from jobset_runtime.identity import PodMetadata, derive  # noqa: E402
from jobset_runtime.mpi import channel, launcher  # noqa: E402
from jobset_runtime.peers import wait_for_hosts  # noqa: E402

ZONE = "svc.cluster.local"
PER_OCTET = 250  # addresses 127.A.B.1-250: no .0 or .255 in the last octet


def address(i: int) -> str:
    return f"127.{10 + i // (PER_OCTET * PER_OCTET)}.{(i // PER_OCTET) % PER_OCTET}.{1 + i % PER_OCTET}"


def proc_status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "Threads"):
                out[k] = int(v.split()[0])
    out["fds"] = len(os.listdir("/proc/self/fd"))
    return out


def dns_process(records, conn):
    from jobset_runtime.local.dns import DnsServer

    with DnsServer(zones=[ZONE]) as dns:
        for name, ip in records:
            dns.set(name, ip)
        conn.send(dns.nameserver)
        conn.recv()  # done


def workers_process(key: bytes, port: int, indices: list[int], conn):
    """A real WorkerServer on each of these addresses; reports how each ended."""
    from jobset_runtime.mpi.worker import WorkerServer

    logging.basicConfig(level=logging.ERROR)
    threading.stack_size(256 * 1024)  # thousands of watch threads in one process: small stacks
    admission.raise_nofile_limit()
    servers = []
    try:
        for i in indices:
            servers.append(WorkerServer(key, pod=f"worker-{i}", address=address(i), port=port).start())
    except OSError as e:
        conn.send({"error": f"cannot listen on {address(indices[len(servers)])}:{port}: {e}"})
        return
    conn.send({"ready": len(servers)})
    peak = {}
    stop = threading.Event()

    def sample():
        while not stop.wait(0.5):
            for k, v in proc_status().items():
                peak[k] = max(peak.get(k, 0), v)

    threading.Thread(target=sample, daemon=True).start()
    timeout = conn.recv()  # the launcher is done: every server should have its verdict
    deadline = time.monotonic() + timeout
    outcomes = [s.wait(max(0.0, deadline - time.monotonic())) for s in servers]
    stop.set()
    codes: dict = {}
    for o in outcomes:
        codes[None if o is None else o.code] = codes.get(None if o is None else o.code, 0) + 1
    causes = sorted({o.cause for o in outcomes if o is not None and o.code != 0})[:3]
    ru = resource.getrusage(resource.RUSAGE_SELF)
    conn.send({"watchers": sorted({s.watchers for s in servers}), "codes": codes, "causes": causes, "peak": peak,
               "cpu": (ru.ru_utime, ru.ru_stime)})
    for s in servers:
        s.close()


class Sampler(threading.Thread):
    """This process's threads, descriptors, memory and CPU, every 0.2 s."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float, dict]] = []
        self.stop_ = threading.Event()

    def run(self):
        while not self.stop_.wait(0.2):
            self.samples.append((time.monotonic(), time.process_time(), proc_status()))

    def peak(self, key: str) -> int:
        return max(s[2][key] for s in self.samples)

    def cpu_between(self, t0: float, t1: float) -> float:
        """CPU seconds per second between two moments."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2:
            return float("nan")
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def peak(values, unit: str) -> Stat:
    return Stat.single(values[0], unit) if len(values) == 1 else Stat.max(values, unit)


def one_run(a, identity, hosts, key, mpirun, stamp) -> dict:
    n = len(hosts)
    port = free_port(*(address(i) for i in range(n)))  # every worker address binds it
    procs, pipes = [], []
    for w in range(a.procs):
        mine, theirs = multiprocessing.Pipe()
        p = multiprocessing.Process(target=workers_process, args=(key, port, list(range(w, n, a.procs)), theirs),
                                    daemon=True)
        p.start()
        procs.append(p)
        pipes.append(mine)
    told = False
    try:
        for r in (pipe.recv() for pipe in pipes):
            if "error" in r:
                raise SystemExit(r["error"])
        t = time.monotonic()
        wait_for_hosts([identity.fqdn(h) for h in hosts], port=port, timeout=300, progress_interval=None)
        base = time.monotonic() - t
        time.sleep(1.0)  # the probes' connections served and gone
        os.environ[contract.MPI_PORT_ENV] = str(port)
        marks: dict = {}
        # The stub starts no MPI daemon: an explicit -n, so the launcher does not expect one on every worker.
        opts = launcher.Options(program=["/bin/true"], mpirun_args=["-n", "1"], mpi="openmpi",
                                mpirun=str(mpirun), slots=8, timeout=600)
        sampler = Sampler()
        sampler.start()
        code = launcher.run(opts, identity, marks=marks)
        done = time.monotonic()
        sampler.stop_.set()
        # No stamp: mpirun was stopped before it got as far as writing it (the run failed).
        exec_at = float(stamp.read_text()) if stamp.exists() else marks.get("exec", done)
        stamp.unlink(missing_ok=True)
        for pipe in pipes:
            pipe.send(30.0)
        told = True
        workers = [pipe.recv() for pipe in pipes]
    finally:
        for p in procs:
            p.join(timeout=60 if told else 0)
            if p.is_alive():
                p.kill()
                p.join()
    codes: dict = {}
    for w in workers:
        for c, k in w["codes"].items():
            codes[c] = codes.get(c, 0) + k
    return {
        "code": code, "base": base, "total": exec_at - marks["start"],
        "phases": (marks["peers"] - marks["start"], marks["channels"] - marks["peers"],
                   marks["exec"] - marks["channels"], exec_at - marks["exec"]),
        # While mpirun runs: heartbeats to every worker and nothing else (a second kept off each end).
        "hold_cpu": sampler.cpu_between(exec_at + 1.0, exec_at + a.hold - 1.0),
        "fds": sampler.peak("fds"), "threads": sampler.peak("Threads"),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "after_mpirun": done - exec_at - a.hold,
        "watchers": sorted({x for w in workers for x in w["watchers"]}), "worker_codes": codes,
        "causes": [c for w in workers for c in w["causes"]][:3],
        "worker_threads": sum(w["peak"].get("Threads", 0) for w in workers),
        "worker_cpu": [w["cpu"] for w in workers],
        "launcher_cpu": resource.getrusage(resource.RUSAGE_SELF)[:2],
        "worker_rss_mb": sum(w["peak"].get("VmHWM", 0) for w in workers) / 1024,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=12736)
    ap.add_argument("--per-proc", type=int, default=400,
                    help="worker addresses per process (a thousand or more watch threads in one interpreter "
                         "spend their CPU fighting over its lock)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--hold", type=float, default=10.0, help="seconds the stub mpirun runs")
    a = ap.parse_args(argv)
    a.procs = max(1, -(-a.workers // a.per_proc))
    res = Results(__file__, sys.argv[1:] if argv is None else argv)
    admission.raise_nofile_limit()
    logging.basicConfig(level=logging.WARNING)

    tmp = Path(tempfile.mkdtemp())
    token = tmp / "token"
    token.write_bytes(os.urandom(16).hex().encode())
    mpirun = tmp / "mpirun"
    stamp = tmp / "exec"
    # It answers `--version` as Open MPI 5 does: the launcher checks which MPI it was given.
    mpirun.write_text(f"#!{sys.executable}\nimport sys, time\n"
                      "if sys.argv[1:] == ['--version']:\n    print('mpirun (Open MPI) 5.0.11')\n    sys.exit(0)\n"
                      f"open({str(stamp)!r}, 'w').write(repr(time.monotonic()))\ntime.sleep({a.hold!r})\n")
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

    mine, theirs = multiprocessing.Pipe()
    dns = multiprocessing.Process(target=dns_process, args=([(identity.fqdn(h), address(i)) for i, h in
                                                             enumerate(hosts)], theirs), daemon=True)
    dns.start()
    nameserver = mine.recv()
    os.environ.update({contract.MPI_TOKEN_FILE_ENV: str(token), contract.NAMESERVERS_ENV: nameserver})
    runs = []
    try:
        for _ in range(a.runs):
            r = one_run(a, identity, hosts, key, mpirun, stamp)
            print({k: v for k, v in r.items()}, flush=True)
            runs.append(r)
    finally:
        mine.send("done")
        dns.join(timeout=10)
    ok = all(r["code"] == 0 and r["watchers"] == [1] and r["worker_codes"] == {0: n} for r in runs)
    if not ok:
        res.note("NOT every worker address got its one watch channel and the launcher's verdict: "
                 + "; ".join(f"launcher exit {r['code']}, watchers per address {r['watchers']}, worker exits "
                             f"{r['worker_codes']}, {r['causes']}" for r in runs))
    where = (f"{n:,} worker addresses on loopback (embedded DNS; a real WorkerServer on each address, "
             f"over {a.procs} processes)")
    key_ = f"mpi.launcher_start{n}"
    if not ok:
        # What a broken run measured is kept, under names of its own and said to be broken,
        # so no page quoting a working run's figures picks it up.
        key_ += "_broken"
        where = f"BROKEN RUN (see its note), {where}"
    totals = [r["total"] for r in runs]
    res.add(key_, f"MPI launcher, {where}: launcher start -> mpirun exec", Stat.median(totals, "s"),
            spread=[Stat.max(totals, "s")] if len(runs) > 1 else [],
            baseline=Stat.median([r["base"] for r in runs], "s"),
            baseline_what="`peers.wait_for_hosts` alone for the same names and port")
    for i, phase in enumerate(("DNS + port wait", f"{n:,} authenticated watch channels",
                               "hostfile, agent, env", "process start to exec")):
        res.add(f"{key_}.phase{i + 1}", f"MPI launcher, {where}, phase: {phase}",
                Stat.median([r["phases"][i] for r in runs], "s"))
    res.add(f"{key_}.heartbeat_cpu", f"MPI launcher CPU while mpirun runs ({a.hold:g} s): a heartbeat to each of "
            f"{n:,} workers every {channel.HEARTBEAT_S:g} s, nothing else",
            Stat.median([100 * r["hold_cpu"] for r in runs], "%"))
    res.add(f"{key_}.fds", "MPI launcher peak open descriptors", peak([r["fds"] for r in runs], "fds"))
    res.add(f"{key_}.threads", "MPI launcher peak threads", peak([r["threads"] for r in runs], "threads"))
    res.add(f"{key_}.rss", "MPI launcher peak RSS (the bench's own process: launcher + its set-up)",
            peak([r["rss_mb"] for r in runs], "MB"))
    res.note(f"the worker side ({n:,} WorkerServers in {a.procs} processes) peaked at "
             f"{max(r['worker_threads'] for r in runs):,} threads and {max(r['worker_rss_mb'] for r in runs):,.0f} MB "
             "in all: a bench's stand-in for worker pods, not a product figure")
    res.write()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
