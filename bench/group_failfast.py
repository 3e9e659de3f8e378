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
import contextlib
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

from jobset_runtime.errors import JobSetRuntimeError
from jobset_runtime.group import GroupMember, GroupServer, MemberId
from jobset_runtime.group.relay import SliceLeader

HEARTBEAT, DEADLINE = 0.5, 3.0
IDLE_WINDOW = 3.0


def world_of(n):
    return [MemberId(r, f"bench-{r}") for r in range(n)]


# --- worker process ----------------------------------------------------------------

class MemberSet:
    """The members one worker process runs for one group, with their abort and restart times."""

    def __init__(self, cmd):
        world = world_of(cmd["n"])
        token = bytes.fromhex(cmd["token"])
        size = cmd["slice"]  # flat: the whole world is one slice
        self.members = [GroupMember(server=("127.0.0.1", cmd["ports"][r // size]), me=world[r],
                                    world=world[r // size * size:(r // size + 1) * size], token=token,
                                    attempt=cmd["attempt"], heartbeat=HEARTBEAT, deadline=DEADLINE)
                        for r in cmd["ranks"]]
        self.restart = cmd.get("restart", False)
        self.aborted_at = {}  # rank -> (monotonic time, rank the abort named)
        self.restarted_at = {}
        self.done = threading.Event()
        self.lock = threading.Lock()
        for m in self.members:
            m.on_abort(lambda failure, m=m: self.on_abort(m, failure))

    def join(self):
        threads = [threading.Thread(target=m.join, args=(60,)) for m in self.members]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def on_abort(self, m, failure):
        with self.lock:
            if m.me.rank in self.aborted_at:
                return
            self.aborted_at[m.me.rank] = (time.monotonic(), failure.rank)
            everyone = len(self.aborted_at) == len(self.members)
        if self.restart:
            threading.Thread(target=self.barrier, args=(m,), daemon=True).start()
        elif everyone:
            self.done.set()

    def barrier(self, m):
        try:
            m.restart_barrier(30)
            with self.lock:
                self.restarted_at[m.me.rank] = time.monotonic()
                everyone = len(self.restarted_at) == len(self.members)
            if everyone:
                self.done.set()
        except JobSetRuntimeError as e:  # shows as a missing time
            print(f"barrier: {e}", file=sys.stderr)

    def result(self):
        self.done.wait(30)
        with self.lock:
            times = self.restarted_at.values() if self.restart else [t for t, _ in self.aborted_at.values()]
            named = {who for _, who in self.aborted_at.values()}
        return {"times": sorted(times), "expected": len(self.members), "named": sorted(named)}

    def close(self):
        for m in self.members:
            m.close()


def worker() -> None:
    """Runs the members it is told to; reports join, then abort or restart times."""
    logging.getLogger("jobset_runtime.group").setLevel(logging.CRITICAL)
    group = None

    def say(**reply):
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()

    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "run":
            group = MemberSet(cmd)
            group.join()
            say(joined=True)
        elif cmd["cmd"] == "fail":
            t0 = time.monotonic()
            group.members[0].report_failure(1, "bench")
            say(t0=t0)
        elif cmd["cmd"] == "collect":
            say(**group.result())
        elif cmd["cmd"] == "close":
            group.close()


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

def one_run(n, workers, attempt, mode, slice_size=0):
    """mode: kill (SIGKILL the victim), stop (SIGSTOP it), restart (victim reports a failure).

    slice_size: 0 for one flat group; else a two-level tree of slices of that size, the
    leaders' server and every slice leader in this process."""
    token = os.urandom(32)
    world = world_of(n)
    victim_rank = n - 1
    size = slice_size or n
    opts = {"token": token, "attempt": attempt, "heartbeat": HEARTBEAT, "deadline": DEADLINE}
    with contextlib.ExitStack() as stack:
        if slice_size:
            leaders = world[::size]
            top = stack.enter_context(GroupServer(bind=("127.0.0.1", 0), world=leaders, leaders=True, **opts))
            ports = [stack.enter_context(SliceLeader(
                bind=("127.0.0.1", 0), slice_world=world[i:i + size], upstream=top.address, me=world[i],
                leaders=leaders, **opts)).address[1] for i in range(0, n, size)]
        else:
            ports = [stack.enter_context(GroupServer(bind=("127.0.0.1", 0), world=world, **opts)).address[1]]
        victim = Worker()
        everyone = workers + [victim]
        shares = [list(range(i, n - 1, len(workers))) for i in range(len(workers))] + [[victim_rank]]
        common = {"cmd": "run", "ports": ports, "slice": size, "attempt": attempt, "n": n,
                  "token": token.hex(), "restart": mode == "restart"}
        for w, ranks in zip(everyone, shares):
            w.send(ranks=ranks, **common)
        for w in everyone:
            assert w.recv()["joined"]
        time.sleep(0.3)  # let the first heartbeats go by
        if mode == "idle":
            # The coordinator's steady load: this process does nothing else meanwhile.
            c0, w0 = os.times(), time.monotonic()
            time.sleep(IDLE_WINDOW)
            c1, w1 = os.times(), time.monotonic()
            idle_load = (c1.user + c1.system - c0.user - c0.system) / (w1 - w0)
        if mode == "restart":
            victim.send(cmd="fail")
            t0 = victim.recv()["t0"]
        else:
            t0 = time.monotonic()
            victim.p.send_signal(signal.SIGSTOP if mode == "stop" else signal.SIGKILL)
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
    return idle_load if mode == "idle" else max(times) - t0


JAX_MEMBER = """
import sys, time
import jax
port, n, i, hb = (int(a) for a in sys.argv[1:5])
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=n, process_id=i,
                           cluster_detection_method="deactivate", heartbeat_timeout_seconds=hb)
print("ready", flush=True)
time.sleep(3600)
"""


def jax_detection(n: int, heartbeat: int) -> float | None:
    """The same kill seen by JAX alone: n processes in one jax.distributed job on loopback,
    SIGKILL of the last one, then the time until the last survivor is gone (JAX's
    coordination service aborts them once the victim misses its heartbeats)."""
    try:
        import jax  # noqa: F401
    except ImportError:
        return None
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-c", JAX_MEMBER, str(port), str(n), str(i), str(heartbeat)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
             for i in range(n)]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a JAX process did not start")
        t0 = time.monotonic()
        procs[-1].kill()
        for p in procs[:-1]:
            p.wait(timeout=heartbeat * 3 + 60)
        return time.monotonic() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


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
    ap.add_argument("--slice", type=int, default=16, help="slice size of the two-level tree line")
    ap.add_argument("--jax-heartbeat", type=int, default=100,
                    help="heartbeat_timeout_seconds of the JAX baseline (default: JAX's own default, 100)")
    ap.add_argument("--no-jax", action="store_true", help="skip the JAX baseline (it takes about the heartbeat)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker()
    logging.getLogger("jobset_runtime.group").setLevel(logging.CRITICAL)
    workers = [Worker() for _ in range(a.workers)]
    attempt = 0
    rows = []
    try:
        plan = [("kill", "kill", n, a.runs, 0) for n in a.sizes]
        plan += [("stop", "stop", min(a.sizes), a.stop_runs, 0), ("restart", "restart", a.restart_size, a.runs, 0)]
        plan += [(f"tree/{a.slice}", "kill", max(a.sizes), a.runs, a.slice)]
        n = max(a.sizes)
        load = one_run(n, workers, attempt + 1, "idle")
        attempt += 1
        frames = 2 * n / HEARTBEAT  # heartbeats in and out per second
        print(f"idle     {n:4} members  coordinator CPU {load * 100:5.1f}% of a core for {frames:.0f} frames/s "
              f"= {load / frames * 1e6:.0f} us per heartbeat frame", flush=True)
        for label, mode, n, runs, slice_size in plan:
            lat = []
            for _ in range(runs):
                attempt += 1
                lat.append(one_run(n, workers, attempt, mode, slice_size))
            rows.append((mode, n, runs, statistics.median(lat), pct(lat, 99), max(lat)))
            print(f"{label:8} {n:4} members  runs {runs:3}  p50 {rows[-1][3]*1e3:8.1f} ms  "
                  f"p99 {rows[-1][4]*1e3:8.1f} ms  max {rows[-1][5]*1e3:8.1f} ms", flush=True)
    finally:
        for w in workers:
            w.close()
    print(f"\nmachine: {os.cpu_count()} CPUs; heartbeat {HEARTBEAT} s, deadline {DEADLINE} s; "
          f"{a.workers} worker processes + 1 victim process; coordinator in the driver process")
    print("kill    : SIGKILL of one member's process -> last surviving member's abort (goal p99 < 1 s)")
    print("stop    : SIGSTOP (vanished node, no RST) -> last abort; the deadline, give or take a heartbeat (baseline)")
    print("restart : a member reports its child's failure -> every member past the restart barrier")
    print("jax     : the same SIGKILL with no group channel, noticed by JAX's coordination service alone")
    print(f"tree/{a.slice} : kill, through a two-level tree (slice leaders of {a.slice} members each, "
          "all leaders in the driver process)")
    if a.no_jax:
        return
    jax_s = jax_detection(4, a.jax_heartbeat)
    if jax_s is None:
        print("jax        JAX baseline skipped: jax is not installed")
    else:
        print(f"jax         4 processes  kill -> last survivor gone: {jax_s * 1e3:8.0f} ms "
              f"(jax.distributed alone, heartbeat_timeout_seconds={a.jax_heartbeat}; one run)")


if __name__ == "__main__":
    main()
