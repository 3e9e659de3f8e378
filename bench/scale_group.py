"""The fail-fast group at the record scale: a coordinator, S slice leaders and N real GroupMembers, each
member with its own TCP connection from its own loopback address (127.x.y.z), over as many processes
as needed; --kills kills of a random member, each followed by an in-place restart.  Beside it, in the
same run, the flat group (one server for every member) at the largest of --flat-pods that gets through.

Processes: one for the coordinator (the leaders' GroupServer; in the flat group, the only server),
--leader-procs for the SliceLeaders (the slice servers of one process on one event loop, the upstream
members on one reactor), and members in processes of --per-proc members each.  The members
of one process share one reactor thread (group/reactor.py: the product's GroupMember, driven as a
process hosting many of them drives it; a wrapper's member has a reactor of its own), and the
supervisor's loop around each member is event-driven: start_join(), and on the abort enter_barrier(),
what supervisor.run_in_group does with join() and restart_barrier().  A kill is the child of a random
member failing (report_failure, as the supervisor reports an exit).

Figures (all clocks are CLOCK_MONOTONIC, shared by the processes):
  gang start              last member's start_join() -> last member told to start
  CPU per join            user + system CPU over the gang start, of the servers' processes (coordinator
                          and leaders) and of the members' processes, divided by the members: the
                          gang start of N on 2 CPUs is CPU-bound, and this is where the CPU goes
  kill -> last abort      report_failure -> the last member's abort, over K kills
  in-place restart        report_failure -> every member running in the next epoch, over K kills
  peak fds/threads/RSS    of the coordinator's process, of one leader, per member
  coordinator CPU         user + system CPU of the coordinator's process over the whole run

    python bench/scale_group.py                       # 12,736 = 199 x 64 through the tree, flat beside it
    python bench/scale_group.py --pods 4096 --slices 64 --flat-pods 1024 4096      # development size
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import resource
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import Results, Stat  # noqa: E402

from jobset_runtime import admission  # noqa: E402
from jobset_runtime.addresses import free_port  # noqa: E402
from jobset_runtime.errors import JobSetRuntimeError  # noqa: E402
from jobset_runtime.group import GroupMember, GroupServer, MemberId, MemberPhase  # noqa: E402
from jobset_runtime.group.reactor import Reactor  # noqa: E402
from jobset_runtime.group.relay import SliceLeader  # noqa: E402

TOKEN = b"scale-group-bench-token-0123456789abcdef"
WAIT = 600.0


def address(rank: int) -> str:
    """A loopback address of its own per pod (none ends in .0 or .255)."""
    return f"127.{rank // 62500 + 1}.{rank // 250 % 250 + 1}.{rank % 250 + 1}"


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

def coordinator_proc(cfg, port, conn):
    admission.raise_nofile_limit()
    world, groups = layout(cfg["pods"], cfg["slices"])
    opts = dict(token=TOKEN, attempt=0, heartbeat=cfg["heartbeat"], deadline=cfg["deadline"])
    if cfg["slices"] == 1:
        srv = GroupServer(bind=(address(0), port), world=world, **opts)
    else:
        srv = GroupServer(bind=(address(0), port + 1), world=[g[0] for g in groups], slices=groups, **opts)
    srv.start()
    conn.send("up")
    conn.recv()
    srv.stop()


def leaders_proc(cfg, port, mine, conn):
    admission.raise_nofile_limit()
    threading.stack_size(512 * 1024)
    world, groups = layout(cfg["pods"], cfg["slices"])
    leaders = [g[0] for g in groups]
    opts = dict(token=TOKEN, attempt=0, heartbeat=cfg["heartbeat"], deadline=cfg["deadline"])
    reactor = Reactor("leaders-upstream")
    # The slice servers of this process share one event loop, as its upstream members share one
    # reactor: a leader pod runs one slice server, not one per thread contending for one interpreter.
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="leaders-servers", daemon=True).start()
    running = []
    for i in mine:
        g = groups[i]
        sl = SliceLeader(bind=(address(g[0].rank), port), slice_world=g, upstream=(address(0), port + 1),
                         me=g[0], leaders=leaders, join_timeout=WAIT, barrier_timeout=WAIT,
                         source=address(g[0].rank), reactor=reactor, loop=loop, **opts)
        sl.start()
        running.append(sl)
    conn.send("up")
    conn.recv()
    for sl in running:
        sl.stop()
    reactor.stop()
    loop.call_soon_threadsafe(loop.stop)


class Tally:
    """Per epoch, how many members of this process got there and when the last one did."""

    def __init__(self):
        self.lock = threading.Lock()
        self.count: dict[tuple[str, int], int] = {}
        self.last: dict[tuple[str, int], float] = {}
        self.errors: list[str] = []

    def note(self, kind: str, epoch: int) -> None:
        t = time.monotonic()
        with self.lock:
            key = (kind, epoch)
            self.count[key] = self.count.get(key, 0) + 1
            self.last[key] = max(self.last.get(key, 0.0), t)

    def snapshot(self) -> dict:
        with self.lock:
            return {"count": dict(self.count), "last": dict(self.last), "errors": list(self.errors)}


def members_proc(cfg, port, ranks, conn):
    """The members `ranks` on one reactor; commands from the driver: join, kill RANK, status, stop."""
    admission.raise_nofile_limit()
    world, groups = layout(cfg["pods"], cfg["slices"])
    slice_of = {m.rank: g for g in groups for m in g}
    flat = cfg["slices"] == 1
    reactor = Reactor("members")
    tally = Tally()
    stopping = threading.Event()

    barrier_of: dict[int, int] = {}  # rank -> the epoch it waits at the barrier to leave

    def supervise(m: GroupMember) -> None:
        # The supervisor's loop around a child that runs until it is killed, without a thread:
        # running in an epoch, or aborted -> at the barrier; an abort while at the barrier ends
        # the restarts (restart_barrier() raises it).
        if m.phase is MemberPhase.RUNNING:
            tally.note("running", m.epoch)
            return
        if m.phase is not MemberPhase.ABORTED:
            return
        if barrier_of.get(m.me.rank) == m.epoch:
            error = f"the restart barrier of epoch {m.epoch} was aborted: {m.abort_cause.describe()}"
        else:
            tally.note("abort", m.epoch)
            try:
                barrier_of[m.me.rank] = m.enter_barrier()
                return
            except JobSetRuntimeError as e:
                error = str(e)
        if not stopping.is_set():
            with tally.lock:
                tally.errors.append(f"rank {m.me.rank}: {error}"[:300])

    members = {}
    for r in ranks:
        g = world if flat else slice_of[r]
        server = (address(0) if flat else address(g[0].rank), port)
        m = GroupMember(server=server, me=world[r], world=g, token=TOKEN, attempt=0, heartbeat=cfg["heartbeat"],
                        deadline=cfg["deadline"], source=address(r), reactor=reactor)
        m.on_phase(supervise)
        members[r] = m
    conn.send("up")
    while True:
        cmd = conn.recv()
        if cmd[0] == "join":
            for m in members.values():
                m.start_join(WAIT)
            conn.send(time.monotonic())
        elif cmd[0] == "kill":
            t = time.monotonic()
            members[cmd[1]].report_failure(137, "killed by the scale bench")
            conn.send(t)
        elif cmd[0] == "status":
            snap = tally.snapshot()
            # A member that gave up (refused, or its join deadline passed) never reaches a phase.
            snap["closed"] = sum(m.phase is MemberPhase.CLOSED for m in members.values())
            conn.send(snap)
        elif cmd[0] == "stop":
            stopping.set()
            for m in members.values():
                m.close()
            reactor.stop()
            conn.send("ok")
            return


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


class Broke(Exception):
    """The group did not get through a step: reported with the figures measured before it."""


def one_group(args, pods: int, slices: int, kills: int) -> dict:
    """One group of `pods` members in `slices` slices (1: flat) through a gang start and `kills` kills."""
    cfg = {"pods": pods, "slices": slices, "heartbeat": args.heartbeat, "deadline": args.deadline}
    ctx = mp.get_context("fork")
    world, groups = layout(pods, slices)
    # The coordinator on port (flat) or port + 1 (the leaders' group), the slice leaders on port.
    port = free_port(*{address(g[0].rank) for g in groups}, count=2)
    t_begin = time.monotonic()
    procs = []

    def spawn(target, *a):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=target, args=(cfg, port, *a, child), daemon=True)
        p.start()
        procs.append(p)
        return parent, p

    coord, coord_p = spawn(coordinator_proc)
    coord.recv()
    leader_pipes, leader_ps = [], []
    if slices > 1:
        n_procs = min(args.leader_procs, len(groups))
        for w in range(n_procs):
            c, p = spawn(leaders_proc, list(range(w, len(groups), n_procs)))
            leader_pipes.append(c)
            leader_ps.append(p)
        for c in leader_pipes:
            c.recv()
    member_pipes, member_ps, owner = [], [], {}
    for i in range(0, pods, args.per_proc):
        ranks = list(range(i, min(pods, i + args.per_proc)))
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

    def status():
        for c in member_pipes:
            c.send(("status",))
        snaps = [c.recv() for c in member_pipes]
        count, last = {}, {}
        for s in snaps:
            for k, v in s["count"].items():
                count[k] = count.get(k, 0) + v
            for k, v in s["last"].items():
                last[k] = max(last.get(k, 0.0), v)
        return count, last, [e for s in snaps for e in s["errors"]], sum(s["closed"] for s in snaps)

    def wait_for(kind, epoch, what):
        end = time.monotonic() + args.step_timeout
        while time.monotonic() < end:
            count, last, errors, closed = status()
            if errors:
                raise Broke(f"{what}: {len(errors)} members failed, e.g. {errors[0]}")
            if closed:
                raise Broke(f"{what}: {closed} members gave up joining")
            if count.get((kind, epoch), 0) == pods:
                return last[(kind, epoch)]
            time.sleep(0.1)
        got = status()[0].get((kind, epoch), 0)
        raise Broke(f"{what}: {got} of {pods} members got there within {args.step_timeout:g} s")

    def cpu(role):
        return sum(usage(pid).get("cpu_s", 0.0) for pid in sampler.roles[role])

    cpu_before = {role: cpu(role) for role in sampler.roles}
    for c in member_pipes:
        c.send(("join",))
    last_called = max(c.recv() for c in member_pipes)

    broke, gang_start_s, gang_cpu_s = None, None, None
    rng = random.Random(args.seed)
    aborts_ms, restarts_s = [], []
    try:
        gang_start_s = wait_for("running", 0, "gang start") - last_called
        gang_cpu_s = {role: cpu(role) - cpu_before[role] for role in sampler.roles}
        for k in range(kills):
            victim = rng.randrange(pods)
            owner[victim].send(("kill", victim))
            t_kill = owner[victim].recv()
            last_abort = wait_for("abort", k, f"kill {k + 1}: the abort")
            last_running = wait_for("running", k + 1, f"kill {k + 1}: the restart")
            aborts_ms.append((last_abort - t_kill) * 1000)
            restarts_s.append(last_running - t_kill)
    except Broke as e:
        broke = str(e)  # what broke is a result too
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
        if p.is_alive():
            p.kill()

    def peaks(role, per=1):
        rows = [v for v in sampler.peak.values() if v["role"] == role]
        if not rows:
            return None
        return {"processes": len(rows), "fds": max(r.get("fds", 0) for r in rows) / per,
                "threads": max(r.get("Threads", 0) for r in rows) / per,
                "rss_mib": max(r.get("VmHWM", 0) for r in rows) / 1024 / per}

    leaders_per_proc = -(-len(groups) // len(leader_ps)) if leader_ps else 0
    leader_process = peaks("leaders")
    return {
        "pods": pods, "slices": slices, "tree": slices > 1, "broke": broke, "kills_done": len(aborts_ms),
        "gang_start_s": gang_start_s, "gang_start_cpu_s": gang_cpu_s, "kill_to_last_abort_ms": aborts_ms, "inplace_restart_s": restarts_s,
        "coordinator": peaks("coordinator"), "leader_process": leader_process,
        "leader_process_leaders": leaders_per_proc,
        "one_leader": ({k: leader_process[k] / leaders_per_proc for k in ("fds", "threads", "rss_mib")}
                       if leader_process else None),
        "per_member": peaks("members", min(args.per_proc, pods)), "member_process": peaks("members"),
        "member_processes": len(member_ps), "leader_processes": len(leader_ps),
        "coordinator_cpu_s": coord_cpu, "wall_s": time.monotonic() - t_begin,
    }


def label(g: dict) -> str:
    return (f"tree {g['pods']:,} ({g['slices']} slices)" if g["tree"] else f"flat {g['pods']:,}")


def record(res: Results, tree: dict, flat: dict | None, args) -> None:
    """The tree's figures, each beside the flat group's (the largest that got through) as its baseline."""
    def both(name, what, unit, pick, goal=""):
        t = pick(tree)
        if t is None:
            return
        b = pick(flat) if flat else None
        res.add(f"scale.tree.{name}", f"{label(tree)}: {what}", t[0], spread=t[1:], goal=goal,
                baseline=b[0] if b else None, baseline_what=f"{label(flat)}, same run" if b else "")

    def latency(key, unit, scale=1.0):
        def pick(g):
            xs = [x * scale for x in g[key]]
            return (Stat.tail(xs, unit), Stat.median(xs, unit)) if xs else None
        return pick

    def single(get, unit):
        def pick(g):
            v = get(g)
            return (Stat.single(v, unit),) if v is not None else None
        return pick

    both("gang_start", "last member's join called -> every member told to start", "s",
         single(lambda g: g["gang_start_s"], "s"), "< 5 s")
    def per_join(*roles):
        def pick(g):
            c = g.get("gang_start_cpu_s")
            return (Stat.single(round(sum(c[r] for r in roles) / g["pods"] * 1e6), "us"),) if c else None
        return pick

    both("gang_start_cpu.servers", "CPU per join of the servers' processes (coordinator and leaders) over the "
         "gang start", "us", per_join("coordinator", "leaders"))
    both("gang_start_cpu.members", "CPU per join of the members' processes over the gang start", "us",
         per_join("members"))
    both("kill_to_last_abort", f"a member's child fails -> the last member's abort ({tree['kills_done']} kills, "
         "each through an in-place restart)", "ms", latency("kill_to_last_abort_ms", "ms"), "p99 < 1 s")
    both("inplace_restart", "a member's child fails -> every member running in the next epoch", "s",
         latency("inplace_restart_s", "s"), "< 5 s")
    both("coordinator_cpu", "CPU of the coordinator's process over the whole run", "s",
         single(lambda g: g["coordinator_cpu_s"], "s"))
    for role, key in (("coordinator", "coordinator"), ("leader", "one_leader"), ("member", "per_member")):
        for stat, unit, what in (("fds", "fds", "descriptors"), ("threads", "threads", "threads"),
                                 ("rss_mib", "MiB", "peak RSS")):
            def get(g, key=key, stat=stat):
                return (g.get(key) or {}).get(stat)
            if get(tree) is None:
                continue
            who = {"coordinator": "the coordinator's process", "leader": "one slice leader (its share of a "
                   f"process of {tree['leader_process_leaders']})", "member": "a member (a member process's "
                   "peak / its members)"}[role]
            t = Stat.single(round(get(tree), 3), unit)
            b = get(flat) if flat and role != "leader" else None
            res.add(f"scale.tree.{role}.{stat}", f"{label(tree)}: {what} of {who}", t,
                    baseline=Stat.single(round(b, 3), unit) if b is not None else None,
                    baseline_what=f"{label(flat)}, same run" if b is not None else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=12736)
    ap.add_argument("--slices", type=int, default=199, help="slices of the tree")
    ap.add_argument("--flat-pods", type=int, nargs="*", default=[1024, 4096, 8192, 12736],
                    help="flat groups tried in this order until one breaks; the largest that gets through is "
                         "the tree's baseline")
    ap.add_argument("--kills", type=int, default=100, help="kills through the tree (100 or more: a p99)")
    ap.add_argument("--flat-kills", type=int, default=30, help="kills through each flat group, the baseline")
    ap.add_argument("--per-proc", type=int, default=800, help="members per process (one reactor thread each)")
    ap.add_argument("--leader-procs", type=int, default=8)
    ap.add_argument("--heartbeat", type=float, default=5.0)
    ap.add_argument("--deadline", type=float, default=30.0)
    ap.add_argument("--step-timeout", type=float, default=300.0, help="longest wait for one step (gang start, "
                    "an abort, a restart) before the run counts as broken")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--json", metavar="FILE", help="also write every group's raw figures here")
    ap.add_argument("--log-level", default="CRITICAL",
                    help="the product's log level in the bench's processes (default CRITICAL: an abort "
                         "logs a line per member, and 12,736 lines per kill would be the bench's cost)")
    args = ap.parse_args()
    if args.slices < 2:
        raise SystemExit("--slices: at least 2 (the tree); the flat group runs beside it (--flat-pods)")
    if args.pods > 250 * 250 * 200:
        raise SystemExit("--pods: at most 12,500,000 loopback addresses")
    import logging

    logging.basicConfig(level=args.log_level)
    logging.getLogger("jobset_runtime").setLevel(args.log_level)
    admission.raise_nofile_limit()
    res = Results(__file__)
    load_start = os.getloadavg()
    flats, flat = [], None
    for n in args.flat_pods:
        g = one_group(args, n, 1, args.flat_kills)
        flats.append(g)
        print(f"{label(g)}: {'broke: ' + g['broke'] if g['broke'] else 'got through'} ({g['wall_s']:.0f} s)",
              flush=True)
        if g["broke"]:
            res.note(f"the flat group of {n:,} broke: {g['broke']}")
            break
        flat = g
    tree = one_group(args, args.pods, args.slices, args.kills)
    print(f"{label(tree)}: {'broke: ' + tree['broke'] if tree['broke'] else 'got through'} "
          f"({tree['wall_s']:.0f} s)", flush=True)
    if tree["broke"]:
        res.note(f"the {label(tree)} broke: {tree['broke']}")
    record(res, tree, flat, args)
    res.note(f"heartbeat {args.heartbeat:g} s, deadline {args.deadline:g} s; members {args.per_proc} per process "
             f"on one reactor thread, {args.leader_procs} leader processes; load average "
             f"{load_start[0]:.1f} at the start")
    res.write()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "flat": flats, "tree": tree,
                       "rlimit_nofile": resource.getrlimit(resource.RLIMIT_NOFILE)}, f, indent=1)
    return 1 if tree["broke"] else 0


if __name__ == "__main__":
    sys.exit(main())
