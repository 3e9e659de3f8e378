"""Fail-fast latency of the group channel: from a member's death to the last member's abort.

Set-up, all on loopback on this machine:
  - the coordinator (GroupServer) runs in this process, in its own thread;
  - the surviving members run as threads, spread over --workers worker processes
    (one GroupMember = one thread, as in a wrapper);
  - the victim is one member in a process of its own, killed with SIGKILL.
Each run is a fresh group (a new restart-attempt).  The figure is the time from just
before os.kill to the last surviving member's abort callback (CLOCK_MONOTONIC is
shared by all processes of the machine).  Printed beside it, measured in the same run:
  - the same group when the victim's node vanishes instead (SIGSTOP: no FIN/RST, only
    silence), which the heartbeat deadline has to catch;
  - the channel's part of an in-place restart: from a child's failure report to every
    member past the restart barrier.

    python bench/group_failfast.py [--sizes 16 64 256] [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobset_runtime.group import GroupMember, GroupServer, MemberId  # noqa: E402

HEARTBEAT, DEADLINE = 0.5, 3.0


def world_of(n):
    return [MemberId(r, f"bench-{r}") for r in range(n)]


# --- worker process ----------------------------------------------------------------

def worker() -> None:
    """Runs the members it is told to, reports join, abort times and barrier times."""
    logging.getLogger("jobset_runtime.group").setLevel(logging.CRITICAL)
    out = sys.stdout
    members = []
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "run":
            world = world_of(cmd["n"])
            token = bytes.fromhex(cmd["token"])
            members = [GroupMember(server=("127.0.0.1", cmd["port"]), me=world[r], world=world, token=token,
                                   attempt=cmd["attempt"], heartbeat=HEARTBEAT, deadline=DEADLINE)
                       for r in cmd["ranks"]]
            aborted_at = {}
            restarted_at = {}
            done = threading.Event()
            restart = cmd.get("restart", False)

            def on_abort(failure, m=None):
                if m.me.rank in aborted_at:
                    return
                aborted_at[m.me.rank] = (time.monotonic(), failure.rank)
                if restart:
                    threading.Thread(target=barrier, args=(m,), daemon=True).start()
                elif len(aborted_at) == len(members):
                    done.set()

            def barrier(m):
                try:
                    m.restart_barrier(30)
                    restarted_at[m.me.rank] = time.monotonic()
                except Exception as e:  # reported as a missing time
                    print(f"barrier: {e}", file=sys.stderr)
                if len(restarted_at) == len(members):
                    done.set()

            for m in members:
                m.on_abort(lambda f, m=m: on_abort(f, m))
            threads = [threading.Thread(target=m.join, args=(60,)) for m in members]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            out.write(json.dumps({"joined": True}) + "\n")
            out.flush()
        elif cmd["cmd"] == "fail":
            t0 = time.monotonic()
            members[0].report_failure(1, "bench")
            out.write(json.dumps({"t0": t0}) + "\n")
            out.flush()
        elif cmd["cmd"] == "collect":
            done.wait(30)
            times = sorted(restarted_at.values()) if restart else sorted(t for t, _ in aborted_at.values())
            named = sorted({who for _, who in aborted_at.values()})
            out.write(json.dumps({"times": times, "expected": len(members), "named": named}) + "\n")
            out.flush()
        elif cmd["cmd"] == "close":
            for m in members:
                m.close()
            members = []


class Worker:
    def __init__(self):
        self.p = subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)

    def send(self, **cmd):
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()

    def recv(self):
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError("a bench worker died")
        return json.loads(line)

    def close(self):
        self.p.stdin.close()
        self.p.wait(10)


# --- driver ------------------------------------------------------------------------

def one_run(n, workers, attempt, mode):
    """mode: kill (SIGKILL the victim), stop (SIGSTOP it), restart (victim reports a failure)."""
    token = os.urandom(32)
    world = world_of(n)
    victim_rank = n - 1
    with GroupServer(bind=("127.0.0.1", 0), world=world, token=token, attempt=attempt,
                     heartbeat=HEARTBEAT, deadline=DEADLINE) as srv:
        victim = Worker()
        everyone = workers + [victim]
        shares = [list(range(i, n - 1, len(workers))) for i in range(len(workers))] + [[victim_rank]]
        common = dict(cmd="run", port=srv.address[1], attempt=attempt, n=n, token=token.hex(),
                      restart=mode == "restart")
        for w, ranks in zip(everyone, shares):
            w.send(ranks=ranks, **common)
        for w in everyone:
            assert w.recv()["joined"]
        time.sleep(0.3)  # let the first heartbeats go by
        if mode == "restart":
            victim.send(cmd="fail")
            t0 = victim.recv()["t0"]
        else:
            t0 = time.monotonic()
            victim.p.send_signal(signal.SIGKILL if mode == "kill" else signal.SIGSTOP)
        times, named = [], set()
        polled = workers + ([victim] if mode == "restart" else [])
        for w in polled:
            w.send(cmd="collect")
        for w in polled:
            got = w.recv()
            if len(got["times"]) != got["expected"]:
                raise RuntimeError(f"{got['expected'] - len(got['times'])} members never saw the {mode}")
            times += got["times"]
            named.update(got["named"])
        for w in polled:
            w.send(cmd="close")
        if named != {victim_rank}:
            raise RuntimeError(f"the abort named {named}, not rank {victim_rank}")
        if mode == "stop":
            victim.p.send_signal(signal.SIGCONT)
        if mode == "restart":
            victim.close()
        else:
            victim.p.kill()
            victim.p.wait(10)
    return max(times) - t0


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--stop-runs", type=int, default=3, help="runs of the SIGSTOP baseline (each ~deadline)")
    ap.add_argument("--restart-size", type=int, default=64)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker()
    logging.getLogger("jobset_runtime.group").setLevel(logging.CRITICAL)
    workers = [Worker() for _ in range(a.workers)]
    attempt = 0
    rows = []
    try:
        plan = [("kill", n, a.runs) for n in a.sizes]
        plan += [("stop", min(a.sizes), a.stop_runs), ("restart", a.restart_size, a.runs)]
        for mode, n, runs in plan:
            lat = []
            for _ in range(runs):
                attempt += 1
                lat.append(one_run(n, workers, attempt, mode))
            rows.append((mode, n, runs, statistics.median(lat), pct(lat, 99), max(lat)))
            print(f"{mode:8} {n:4} members  runs {runs:3}  p50 {rows[-1][3]*1e3:8.1f} ms  "
                  f"p99 {rows[-1][4]*1e3:8.1f} ms  max {rows[-1][5]*1e3:8.1f} ms", flush=True)
    finally:
        for w in workers:
            w.close()
    print(f"\nmachine: {os.cpu_count()} CPUs; heartbeat {HEARTBEAT} s, deadline {DEADLINE} s; "
          f"{a.workers} worker processes + 1 victim process; coordinator in the driver process")
    print("kill    : SIGKILL of one member's process -> last surviving member's abort (goal p99 < 1 s)")
    print("stop    : SIGSTOP (vanished node, no RST) -> last abort; bounded below by the deadline (baseline)")
    print("restart : a member reports its child's failure -> every member past the restart barrier")
    print("JAX's own detection of a dead non-coordinator process is ~heartbeat_timeout_seconds "
          "(100 s by default); not measured here (jax not installed).")


if __name__ == "__main__":
    main()
