"""Fail fast: from one pod's failure to every other pod's process gone.

1. What users run (the headline): --pods pods of the generated manifest, each a real
   `jobset-run --group on` set up as bench/pods.py says (downward-API files, the group token
   mounted, DNS through the pod's resolv.conf), whose child is a shell that execs `sleep`.
   Per run, once every child runs (the gang start is done): SIGKILL of the last pod's child,
   then the time until every other pod's jobset-run process has exited (exit 75, its child
   stopped: checked).  Over --kills runs: p99 from 100 runs, else the max, named so.
   Baseline in the same run and at the same size: JAX alone (`jax.distributed`, no group
   channel), SIGKILL of one process until every other one is gone, with its heartbeat at
   JAX's default and at the smallest value it accepts.
2. The channel alone, at larger sizes (members as threads in --workers processes, the victim
   in a process of its own, the coordinator in this process): kill -> last member's abort
   callback; SIGSTOP (a vanished node: no FIN/RST, only the heartbeat deadline); the
   restart barrier; the two-level tree; the coordinator's CPU with every member idle.

    sudo python bench/group_failfast.py [--pods 16] [--kills 100] [--sizes 16 64 256] [--runs 20] [--no-jax]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import tempfile
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pods  # noqa: E402
from results import Results, Stat  # noqa: E402

from jobset_runtime import contract  # noqa: E402
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


# --- real wrappers ---------------------------------------------------------------------

# `$$$$`: the kubelet expands the manifest's command and turns `$$` into `$`.
CHILD = 'echo $$$$ > "$0/$JOBSET_RUNTIME_RANK"; exec sleep 600'


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its reaper counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wrapper_kills(tmp: Path, n: int, runs: int) -> list[float]:
    """n pods of the default manifest, each a real `jobset-run --group on` whose child is a shell
    that execs `sleep`.  Per run: every pod started, every child running (the gang start is
    done), SIGKILL of the last pod's child, then the time until every other pod's jobset-run
    process has exited; each of their children must have exited too."""
    marks = tmp / "marks"
    marks.mkdir()
    pod_list = pods.pods(tmp / "pods", True, hosts=n, command=["sh", "-c", CHILD, str(marks)])
    times = []
    for run in range(runs):
        for f in marks.iterdir():
            f.unlink()
        procs = [subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for argv, env in pod_list]
        try:
            deadline = time.monotonic() + 120
            while len(list(marks.iterdir())) < n:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"run {run}: the {n} pods did not all start their children")
                time.sleep(0.01)
            time.sleep(0.05)  # every pid file written out
            children = {int(f.name): int(f.read_text()) for f in marks.iterdir()}
            exited = {}

            def watch(i, p):
                p.wait()
                exited[i] = time.monotonic()

            threads = [threading.Thread(target=watch, args=(i, p)) for i, p in enumerate(procs[:-1])]
            for t in threads:
                t.start()
            t0 = time.monotonic()
            os.kill(children[n - 1], signal.SIGKILL)
            for t in threads:
                t.join(60)
            if len(exited) != n - 1:
                raise RuntimeError(f"run {run}: {n - 1 - len(exited)} pods' jobset-run did not exit")
            codes = {p.returncode for p in procs[:-1]}
            if codes != {contract.EXIT_PEER_FAILED}:
                raise RuntimeError(f"run {run}: the other pods exited {codes}, not {contract.EXIT_PEER_FAILED}")
            left = [r for r, pid in children.items() if r != n - 1 and not _gone(pid)]
            if left:
                raise RuntimeError(f"run {run}: the children of ranks {left} outlived their jobset-run")
            times.append(max(exited.values()) - t0)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
    return times


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
    from jobset_runtime.addresses import free_port

    port = free_port("::")  # JAX's coordinator listens on every address
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    errs = [tempfile.TemporaryFile(mode="w+") for _ in range(n)]
    procs = [subprocess.Popen([sys.executable, "-c", JAX_MEMBER, str(port), str(n), str(i), str(heartbeat)],
                              stdout=subprocess.PIPE, stderr=errs[i], text=True, env=env)
             for i in range(n)]
    try:
        for i, p in enumerate(procs):
            if p.stdout.readline().strip() != "ready":
                p.kill()
                p.wait()
                errs[i].seek(0)
                raise RuntimeError(f"JAX process {i} did not start: {errs[i].read()[-2000:]}")
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
        for f in errs:
            f.close()


# JAX takes heartbeat_timeout_seconds as a whole number of seconds (jax/_src/distributed.py,
# `heartbeat_timeout_seconds: int = 100`, handed to the coordination service as its
# heartbeat timeout); 100 is its default.  0 is taken, but then a healthy job aborts by
# itself (SIGABRT from the coordination service, no process killed), so 1 is the most
# aggressive value a job can run with.
JAX_DEFAULT_HEARTBEAT, JAX_MIN_HEARTBEAT = 100, 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=int, default=16, help="pods of the real-wrapper line (and of the JAX baseline)")
    ap.add_argument("--kills", type=int, default=100, help="runs of the real-wrapper line (100 or more: a p99)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--stop-runs", type=int, default=3, help="runs of the SIGSTOP baseline (each ~deadline)")
    ap.add_argument("--restart-size", type=int, default=64)
    ap.add_argument("--slice", type=int, default=16, help="slice size of the two-level tree line")
    ap.add_argument("--no-jax", action="store_true", help="skip the JAX baselines (the default one takes ~100 s)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--in-namespace", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker()
    argv = [x for x in sys.argv[1:] if x != "--in-namespace"]
    if not a.in_namespace:
        if not pods.have_dnsmasq():
            sys.exit("dnsmasq is not installed (Debian: apt-get install dnsmasq-base): the pods' DNS needs it")
        pods.enter_pod_namespaces(__file__, argv)
    res = Results(__file__, argv)
    logging.getLogger("jobset_runtime.group").setLevel(logging.CRITICAL)

    # 1. What users run: real wrappers, the kill of one pod's process, every other pod's process gone.
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names = pods.dns_names(pods.pods(tmp / "names", True, hosts=a.pods))
        dm = pods.start_dns(tmp, names)
        try:
            lat = wrapper_kills(tmp, a.pods, a.kills)
        finally:
            dm.stop()
    jax = {}
    if not a.no_jax:
        for hb in (JAX_DEFAULT_HEARTBEAT, JAX_MIN_HEARTBEAT):
            got = jax_detection(a.pods, hb)
            if got is None:
                res.note("jax is not installed: no JAX baseline")
                break
            jax[hb] = Stat.single(got, "s")
            res.add(f"failfast.jax.heartbeat{hb}",
                    f"JAX alone ({a.pods} processes, `jax.distributed`, heartbeat_timeout_seconds={hb}"
                    f"{', its default' if hb == JAX_DEFAULT_HEARTBEAT else ', the smallest a job can run with'}): "
                    "SIGKILL of one process -> every other process gone", jax[hb])
    what = (f"{a.pods} pods of the generated manifest, each a real `jobset-run --group on`: SIGKILL of one pod's "
            "child -> every other pod's jobset-run exited, its child stopped")
    base = jax.get(JAX_MIN_HEARTBEAT)
    res.add(f"failfast.pods{a.pods}", what, Stat.tail(lat, "s"), spread=[Stat.median(lat, "s")], goal="p99 < 1 s",
            baseline=base, baseline_what=f"JAX alone, heartbeat_timeout_seconds={JAX_MIN_HEARTBEAT}" if base else "")

    # 2. The channel alone, members as threads: its share, at larger sizes.
    workers = [Worker() for _ in range(a.workers)]
    attempt = 0
    try:
        n = max(a.sizes)
        load = one_run(n, workers, attempt + 1, "idle")
        attempt += 1
        frames = 2 * n / HEARTBEAT  # heartbeats in and out per second
        res.add(f"failfast.idle{n}.cpu", f"coordinator CPU with {n} idle members ({frames:.0f} heartbeat frames/s)",
                Stat.single(load * 100, "%"))
        res.add(f"failfast.idle{n}.frame", "coordinator CPU per heartbeat frame", Stat.single(load / frames * 1e6, "us"))
        plan = [(f"failfast.members.kill{n}", "kill", n, a.runs, 0,
                 f"the channel alone, {n} members as threads: SIGKILL of one member's process -> last member's abort")
                for n in a.sizes]
        plan.append((f"failfast.members.stop{min(a.sizes)}", "stop", min(a.sizes), a.stop_runs, 0,
                     f"the channel alone, {min(a.sizes)} members: SIGSTOP (a vanished node, no FIN/RST) -> last "
                     f"member's abort (the {DEADLINE:g} s heartbeat deadline)"))
        plan.append((f"failfast.members.restart{a.restart_size}", "restart", a.restart_size, a.runs, 0,
                     f"the channel alone, {a.restart_size} members: a child's failure reported -> every member past "
                     "the restart barrier"))
        plan.append((f"failfast.members.tree{a.slice}", "kill", max(a.sizes), a.runs, a.slice,
                     f"the channel alone, {max(a.sizes)} members through a two-level tree (slices of {a.slice}, "
                     "all leaders in one process): kill -> last member's abort"))
        for name, mode, n, runs, slice_size, what in plan:
            lat = []
            for _ in range(runs):
                attempt += 1
                lat.append(one_run(n, workers, attempt, mode, slice_size))
            res.add(name, what, Stat.median(lat, "s"), spread=[Stat.tail(lat, "s")])
    finally:
        for w in workers:
            w.close()
    res.note(f"heartbeat {HEARTBEAT} s, deadline {DEADLINE} s; the channel-alone lines run {a.workers} worker "
             "processes + 1 victim process, the coordinator in the driver")
    res.write()


if __name__ == "__main__":
    main()
