"""The fail-fast group at the record scale: a coordinator, S slice leaders and N real GroupMembers, each
member with its own TCP connection from its own loopback address (127.x.y.z), over as many processes
as needed; K kills of a random member, each followed by an in-place restart.

Processes: one for the coordinator (the leaders' GroupServer; with --slices 1 the flat group's server),
--leader-procs for the SliceLeaders, and members in processes of --per-proc members each.  Every member
runs what the wrapper's supervisor does around a child: join(), and on an abort restart_barrier(); a
kill is the child of a random member failing (report_failure, as the supervisor reports an exit).

Figures (all clocks are CLOCK_MONOTONIC, shared by the processes):
  gang_start_s             last member's join() called -> last member told to start
  kill_to_last_abort_ms    report_failure -> the last member's abort callback, p50/p99/max over K
  inplace_restart_s        report_failure -> every member running in the next epoch (p50/max)
  peak fds/threads/RSS     per role (coordinator, one leader process / leaders in it, per member)
  coordinator_cpu_s        user + system CPU of the coordinator's process over the whole run

    PYTHONPATH=. python bench/scale_group.py --pods 12736 --slices 199 --kills 30 --json FILE
    PYTHONPATH=. python bench/scale_group.py --pods 256 --slices 1 --kills 30      # flat
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import socket
import statistics
import sys
import threading
import time

from jobset_runtime import admission
from jobset_runtime.group import GroupMember, GroupServer, MemberId
from jobset_runtime.group.relay import SliceLeader

TOKEN = b"scale-group-bench-token-0123456789abcdef"
WAIT = 600.0


def address(rank: int) -> str:
    """A loopback address of its own per pod (none ends in .0 or .255)."""
    return f"127.{rank // 62500 + 1}.{rank // 250 % 250 + 1}.{rank % 250 + 1}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def layout(n: int, s: int):
    world = [MemberId(r, f"pod-{r}") for r in range(n)]
    per = -(-n // s)
    groups = [world[i:i + per] for i in range(0, n, per)]
    return world, groups


def usage(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmHWM", "VmRSS", "Threads"):
                    out[k] = int(v.split()[0])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out["cpu_s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        pass
    return out


# --- the processes ------------------------------------------------------------------

def coordinator_proc(args, port, conn):
    admission.raise_nofile_limit()
    world, groups = layout(args.pods, args.slices)
    opts = dict(token=TOKEN, attempt=0, heartbeat=args.heartbeat, deadline=args.deadline)
    if args.slices == 1:
        srv = GroupServer(bind=(address(0), port), world=world, **opts)
    else:
        srv = GroupServer(bind=(address(0), port + 1), world=[g[0] for g in groups], slices=groups, **opts)
    srv.start()
    conn.send("up")
    conn.recv()
    srv.stop()


def leaders_proc(args, port, mine, conn):
    admission.raise_nofile_limit()
    threading.stack_size(512 * 1024)
    world, groups = layout(args.pods, args.slices)
    leaders = [g[0] for g in groups]
    opts = dict(token=TOKEN, attempt=0, heartbeat=args.heartbeat, deadline=args.deadline)
    running = []
    for i in mine:
        g = groups[i]
        sl = SliceLeader(bind=(address(g[0].rank), port), slice_world=g, upstream=(address(0), port + 1),
                         me=g[0], leaders=leaders, join_timeout=WAIT, barrier_timeout=WAIT,
                         source=address(g[0].rank), **opts)
        sl.start()
        running.append(sl)
    conn.send("up")
    conn.recv()
    for sl in running:
        sl.stop()


def members_proc(args, port, ranks, conn):
    """The members `ranks`; commands from the driver: join, kill RANK, stop."""
    admission.raise_nofile_limit()
    threading.stack_size(256 * 1024)
    world, groups = layout(args.pods, args.slices)
    slice_of = {m.rank: g for g in groups for m in g}
    flat = args.slices == 1
    lock = threading.Lock()
    events = []  # (kind, rank, epoch, time)
    members = {}
    for r in ranks:
        g = world if flat else slice_of[r]
        server = (address(0) if flat else address(g[0].rank), port)
        m = GroupMember(server=server, me=world[r], world=g, token=TOKEN, attempt=0, heartbeat=args.heartbeat,
                        deadline=args.deadline, source=address(r))
        m.on_abort(lambda failure, m=m: _note(events, lock, "abort", m.me.rank, m.epoch))
        members[r] = m

    def life(m):
        # The supervisor's loop around a child that runs until it is killed.
        called = time.monotonic()
        with lock:
            events.append(("join_called", m.me.rank, 0, called))
        try:
            m.join(WAIT)
            _note(events, lock, "running", m.me.rank, 0)
            while True:
                m.aborted.wait()
                epoch = m.restart_barrier(WAIT)
                _note(events, lock, "running", m.me.rank, epoch)
        except Exception as e:  # reported to the driver
            _note(events, lock, f"error {e}"[:300], m.me.rank, m.epoch)

    conn.send("up")
    while True:
        cmd = conn.recv()
        if cmd[0] == "join":
            for m in members.values():
                threading.Thread(target=life, args=(m,), daemon=True).start()
            conn.send("ok")
        elif cmd[0] == "kill":
            m = members[cmd[1]]
            t = time.monotonic()
            m.report_failure(137, "killed by the scale bench")
            conn.send(t)
        elif cmd[0] == "events":
            with lock:
                out = list(events)
                events.clear()
            conn.send(out)
        elif cmd[0] == "stop":
            for m in members.values():
                m.close()
            conn.send("ok")
            return


def _note(events, lock, kind, rank, epoch):
    t = time.monotonic()
    with lock:
        events.append((kind, rank, epoch, t))


# --- the driver ---------------------------------------------------------------------

class Sampler(threading.Thread):
    def __init__(self, roles: dict[str, list[int]]):
        super().__init__(daemon=True)
        self.roles, self.peak, self.stop_ = roles, {}, threading.Event()

    def run(self):
        while not self.stop_.is_set():
            self.sample()
            self.stop_.wait(0.5)

    def sample(self):
        for role, pids in self.roles.items():
            for pid in pids:
                u = usage(pid)
                p = self.peak.setdefault(pid, {"role": role})
                for k, v in u.items():
                    p[k] = max(p.get(k, 0), v)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else None


class Broke(Exception):
    """The group did not get through a step: reported with the figures measured before it."""


def kills(args, rng, owner, events, running_in, wait_for, aborts_ms, restarts_s):
    for k in range(args.kills):
        victim = rng.randrange(args.pods)
        c = owner[victim]
        c.send(("kill", victim))
        t_kill = c.recv()
        wait_for(lambda: len(running_in(k + 1)) == args.pods, f"restart {k + 1}")
        aborts = [e[3] for e in events if e[0] == "abort" and e[2] == k]
        if len(aborts) != args.pods:
            raise Broke(f"kill {k + 1}: {len(aborts)} of {args.pods} members saw the abort")
        aborts_ms.append((max(aborts) - t_kill) * 1000)
        restarts_s.append(max(e[3] for e in events if e[0] == "running" and e[2] == k + 1) - t_kill)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=12736)
    ap.add_argument("--slices", type=int, default=199, help="1: a flat group")
    ap.add_argument("--kills", type=int, default=30)
    ap.add_argument("--per-proc", type=int, default=800, help="members per process")
    ap.add_argument("--leader-procs", type=int, default=4)
    ap.add_argument("--heartbeat", type=float, default=0.5)
    ap.add_argument("--deadline", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--log-level", default="CRITICAL",
                    help="the product's log level in the bench's processes (default CRITICAL: an abort "
                         "logs a line per member, and 12,736 lines per kill would be the bench's cost)")
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=args.log_level)
    logging.getLogger("jobset_runtime").setLevel(args.log_level)
    if args.pods > 250 * 250 * 200:
        raise SystemExit("--pods: at most 12,500,000 loopback addresses")
    admission.raise_nofile_limit()
    ctx = mp.get_context("fork")
    port = free_port()
    world, groups = layout(args.pods, args.slices)
    t_begin = time.monotonic()
    load_before = os.getloadavg()

    pipes, procs = [], []

    def spawn(target, *a):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=target, args=(args, port, *a, child), daemon=True)
        p.start()
        procs.append(p)
        pipes.append(parent)
        return parent, p

    coord, coord_p = spawn(coordinator_proc)
    coord.recv()
    leader_pipes, leader_ps = [], []
    if args.slices > 1:
        for w in range(min(args.leader_procs, len(groups))):
            c, p = spawn(leaders_proc, list(range(w, len(groups), args.leader_procs)))
            leader_pipes.append(c)
            leader_ps.append(p)
        for c in leader_pipes:
            c.recv()
    member_pipes, member_ps, owner = [], [], {}
    for i in range(0, args.pods, args.per_proc):
        ranks = list(range(i, min(args.pods, i + args.per_proc)))
        c, p = spawn(members_proc, ranks)
        member_pipes.append(c)
        member_ps.append(p)
        for r in ranks:
            owner[r] = c
    for c in member_pipes:
        c.recv()
    sampler = Sampler({"coordinator": [coord_p.pid], "leaders": [p.pid for p in leader_ps],
                       "members": [p.pid for p in member_ps]})
    sampler.start()
    events = []

    def collect():
        for c in member_pipes:
            c.send(("events",))
        for c in member_pipes:
            events.extend(c.recv())

    def wait_for(pred, what, timeout=WAIT):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            collect()
            errors = [e for e in events if e[0].startswith("error")]
            if errors:
                raise Broke(f"{what}: {len(errors)} members failed, e.g. rank {errors[0][1]}: {errors[0][0]}")
            if pred():
                return
            time.sleep(0.2)
        raise Broke(f"{what}: not within {timeout:g} s")

    for c in member_pipes:
        c.send(("join",))
    for c in member_pipes:
        c.recv()

    def running_in(epoch):
        return {e[1] for e in events if e[0] == "running" and e[2] == epoch}

    broke, gang_start_s = None, None
    rng = random.Random(args.seed)
    aborts_ms, restarts_s = [], []
    try:
        wait_for(lambda: len(running_in(0)) == args.pods, "gang start")
        last_called = max(e[3] for e in events if e[0] == "join_called")
        gang_start_s = max(e[3] for e in events if e[0] == "running" and e[2] == 0) - last_called
        kills(args, rng, owner, events, running_in, wait_for, aborts_ms, restarts_s)
    except Broke as e:
        broke = str(e)  # what broke is a result too: the figures up to it are written with it
    sampler.sample()

    coord_cpu = usage(coord_p.pid).get("cpu_s")
    for c in member_pipes:
        c.send(("stop",))
    for c in member_pipes:
        c.recv()
    for c in [coord, *leader_pipes]:
        c.send("stop")
    sampler.stop_.set()
    for p in procs:
        p.join(timeout=10)

    def peaks(role, per=1):
        rows = [v for v in sampler.peak.values() if v["role"] == role]
        if not rows:
            return None
        return {"processes": len(rows), "fds": max(r.get("fds", 0) for r in rows) / per,
                "threads": max(r.get("Threads", 0) for r in rows) / per,
                "rss_mib": round(max(r.get("VmHWM", 0) for r in rows) / 1024 / per, 2)}

    leaders_per_proc = -(-len(groups) // max(1, len(leader_ps))) if leader_ps else 1
    report = {
        "bench": "scale_group", "pods": args.pods, "slices": args.slices, "tree": args.slices > 1,
        "kills": args.kills, "heartbeat_s": args.heartbeat, "deadline_s": args.deadline,
        "member_processes": len(member_ps), "leader_processes": len(leader_ps),
        "broke": broke,
        "kills_done": len(aborts_ms),
        "gang_start_s": None if gang_start_s is None else round(gang_start_s, 3),
        "kill_to_last_abort_ms": {"p50": round(pct(aborts_ms, 50), 1), "p99": round(pct(aborts_ms, 99), 1),
                                  "max": round(max(aborts_ms), 1)} if aborts_ms else None,
        "inplace_restart_s": {"p50": round(pct(restarts_s, 50), 3), "max": round(max(restarts_s), 3)}
        if restarts_s else None,
        "coordinator": peaks("coordinator"),
        "leader_process": peaks("leaders"),
        "leader_process_leaders": leaders_per_proc if leader_ps else 0,
        "per_member": peaks("members", args.per_proc),
        "member_process": peaks("members"),
        "coordinator_cpu_s": coord_cpu,
        "wall_s": round(time.monotonic() - t_begin, 1),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "rlimit_nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 1 if broke else 0


if __name__ == "__main__":
    sys.exit(main())
