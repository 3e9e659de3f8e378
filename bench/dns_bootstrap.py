"""DNS load of a whole bootstrap: every query the pods of a S x P tpu-multislice JobSet send while they
come up, counted at the DNS server, the old way and the new way in one run (docs/peers.md, DNS load).

Each pod's record appears at a random moment within --spread seconds, as a real cluster's do, and its
wrapper starts at that moment.  The embedded DNS server (jobset_runtime.local.dns) runs in a process of
its own and counts every datagram it receives; the pods' wrappers are chains of steps run by a few
threads in each of --procs processes (Scheduler), each step doing what the product does:

  old: `jobset-run --wait slice`: peers.wait_for_hosts's rounds for its slice's names and the
       coordinator's, the baseline (it leaves out the group channel's own lookups that came after
       it; a round that waits for a free thread is late, which only lowers this count);
  new: the group's gang start through the tree, as group/session.py builds it: a member asks
       peers.resolve_one for its slice leader's name (a leader's upstream member: the coordinator's;
       the coordinator's joins its own address), retrying after admission's client backoff while it
       has no record (resolve_one itself asks again only once its negative hold for that name has
       passed), then claims its rank at its server, whose KnownPods(on_claim=True, own=its own pod)
       asks for the claimant's name and answers the claim (server._bound's check, called here
       directly in place of the TCP handshake; refused for now without a record, or without an
       answer within LOOKUP_WAIT).  The start is given once every claim is bound; at that moment
       every name must already resolve.

Each process holds the KnownPods of its own slices' leaders, and one for its share of the leaders'
group (the same queries as the coordinator's one KnownPods: one per leader that claims).

Counted at the server: every query, by name and type; retransmissions (a repeated id from the same
socket); queries that came before the name's record was visible.  Counted where each lookup is made
(peers.resolve_batch wrapped in the pods' processes, by kind of lookup and asker): first asks, names
asked again after a miss (retries for late records) or after an answer, and retransmissions; their
sum must be the server's count.  Figures (bench/results.py): the new way's queries, per pod, beside
the old way's measured in the same run; that breakdown; the last record -> the last pod through,
both ways; the DNS server's CPU time (a note).

    python bench/dns_bootstrap.py [--slices 199] [--pods 64] [--spread 30]
"""

from __future__ import annotations

import argparse
import heapq
import json
import multiprocessing
import random
import sys
import threading
import time
import types
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import Results, Stat  # noqa: E402

from jobset_runtime import admission, peers  # noqa: E402
from jobset_runtime.admission import KnownPods  # noqa: E402
from jobset_runtime.group.server import LOOKUP_WAIT  # noqa: E402
from jobset_runtime.peers import NegativeHolds, resolve_batch, resolve_one  # noqa: E402

SUB = "js.default.svc.cluster.local"
ZONE = "svc.cluster.local"


def name(s, p):
    return f"js-slice-{s}-{p}.{SUB}"


def ip(s, p):
    i = s * 256 + p + 1
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def dns_process(records, conn):
    """records: [(name, ip, absolute monotonic time it becomes visible)]; answers stats on request."""
    from jobset_runtime.local.dns import DnsServer

    server = DnsServer(zones=[ZONE])
    # Every query counted by its name, and by (name, id, the client's socket): a retransmission
    # repeats its id from the same socket (two lookups drawing the same random 16-bit id for one
    # name are not one); by its type (A, AAAA); and the queries that came before the name's record
    # was visible.
    by_name, by_id, early, by_type = Counter(), Counter(), Counter(), Counter()
    visible_at = {n.lower(): at for n, _, at in records}
    answer = server._answer_safely
    peer = [None]

    class Tap:
        """The server's UDP socket, noting who sent the datagram being answered."""

        def __init__(self, sock):
            self._sock = sock

        def recvfrom(self, size):
            data, peer[0] = self._sock.recvfrom(size)
            return data, peer[0]

        def __getattr__(self, attr):
            return getattr(self._sock, attr)

    def counted(wire, *, udp):
        labels, i = [], 12
        while i < len(wire) and wire[i]:
            labels.append(wire[i + 1:i + 1 + wire[i]].decode("ascii", "replace").lower())
            i += 1 + wire[i]
        qname = ".".join(labels)
        by_type[{1: "A", 28: "AAAA"}.get(int.from_bytes(wire[i + 1:i + 3], "big"), "other")] += 1
        by_name[qname] += 1
        by_id[(qname, wire[:2], peer[0] if udp else None)] += 1
        if time.monotonic() < visible_at.get(qname, 0.0):
            early[qname] += 1
        return answer(wire, udp=udp)

    server._answer_safely = counted
    server.start()
    server._udp = Tap(server._udp)  # read by the serving thread at each datagram
    for n, a, at in records:
        server.set(n, a, visible_after=max(0.0, at - time.monotonic()))  # `at` itself, however long this loop
    conn.send(server.nameserver)
    cpu = time.process_time()
    conn.recv()  # done
    conn.send({**server.stats, "by_name": dict(by_name), "early": dict(early), "by_type": dict(by_type),
               "retransmissions": sum(by_id.values()) - len(by_id), "cpu_s": time.process_time() - cpu})
    server.stop()


class Scheduler:
    """Each pod as a chain of steps on a few threads (a thread per pod, 12,736 of them, would starve
    the DNS server of CPU and count its retransmissions instead of the pods' logic).  A step is
    step() -> seconds until its next step, or None when the pod is through."""

    def __init__(self, threads: int):
        self._heap, self._seq, self._cond = [], 0, threading.Condition()
        self.pending = 0
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def add(self, at: float, step) -> None:
        with self._cond:
            self._seq += 1
            heapq.heappush(self._heap, (at, self._seq, step))
            self._cond.notify()

    def start(self, n: int) -> None:
        self.pending = n
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self.pending == 0:
                        self._cond.notify_all()
                        return
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        at, _, step = heapq.heappop(self._heap)
                        break
                    self._cond.wait(self._heap[0][0] - now if self._heap else 0.5)
            delay = step()
            with self._cond:
                if delay is None:
                    self.pending -= 1
                    self._cond.notify_all()
                else:
                    self._seq += 1
                    heapq.heappush(self._heap, (time.monotonic() + delay, self._seq, step))
                    self._cond.notify()

    def join(self) -> None:
        for t in self._threads:
            t.join()


def old_pod(ns, s, pods, deadline, done, errors):
    """`jobset-run --wait slice`: peers.wait_for_hosts's loop -- a round of resolve_batch for the names
    still missing, then its backoff (tenacity.wait_exponential_jitter(0.1, max=3, jitter=0.5)) --
    one round per step."""
    import tenacity

    names = [name(s, q) for q in range(pods)] + ([name(0, 0)] if s != 0 else [])
    resolved: set = set()
    wait = tenacity.wait_exponential_jitter(multiplier=0.1, max=3.0, jitter=0.5)
    rounds = [0]

    def step():
        pending = [n for n in names if n not in resolved]
        resolved.update(resolve_batch(pending, [ns], deadline=deadline).resolved)
        if len(resolved) == len(names):
            done.append(time.monotonic())
            return None
        if time.monotonic() >= deadline:
            errors.append(f"slice {s}: {len(names) - len(resolved)} names missing at the deadline")
            return None
        rounds[0] += 1
        return wait(types.SimpleNamespace(attempt_number=rounds[0]))

    return step


# Who asks, per kind of lookup (docs/peers.md, DNS load): a member for its slice leader's name,
# a leader's upstream member for the coordinator's, a server (a slice leader's or the coordinator's)
# for each claimant's.
KINDS = {
    "member": "members -> their slice leader's name",
    "leader": "slice leaders' upstream members -> the coordinator's name",
    "check": "servers -> each claimant's name (slice leaders: their slice's; the coordinator: the leaders')",
}
OUTCOMES = ("first", "again_after_miss", "again_after_answer", "retransmitted")


class Tally:
    """Each lookup the product makes, by kind and asker, counted where it is made: peers.resolve_batch
    (under resolve_one and KnownPods) wrapped in this process.  A name asked again by the same asker
    is a repeat, after a miss (no record yet: a retry for a late record) or after an answer (asked for
    nothing); a query sent again within one lookup (sends beyond one per name) is a retransmission.
    The server's own count of every query is the total these must add up to."""

    def __init__(self):
        self.local = threading.local()  # .who = (kind, asker) for the lookups of this thread
        self.threads: dict[int, tuple[str, str]] = {}  # a KnownPods thread -> (kind, asker)
        self.counts = {k: Counter() for k in KINDS}
        self._last: dict[tuple, bool] = {}  # (asker, name) -> answered the last time
        self._lock = threading.Lock()
        self._batch = peers.resolve_batch

    def install(self) -> None:
        tally = self

        def counted(names, *args, **kwargs):
            got = tally._batch(names, *args, **kwargs)
            who = getattr(tally.local, "who", None) or tally.threads.get(threading.get_ident())
            if who is not None:
                tally.record(who, list(names), got)
            return got

        peers.resolve_batch = counted  # resolve_one and KnownPods (resolve_lone) look it up at each call

    def record(self, who, names, got) -> None:
        kind, asker = who
        with self._lock:
            c = self.counts[kind]
            for n in names:
                before = self._last.get((asker, n))
                c["first" if before is None else "again_after_answer" if before else "again_after_miss"] += 1
                self._last[(asker, n)] = n in got.resolved
                c["missed"] += n not in got.resolved
            c["retransmitted"] += got.queries - len(names)


def new_pod(ns, s, p, slice_known, top_known, deadline, done, errors, tally):
    """One member's join (a leader's: its upstream join), as GroupMember + server._bound do it:
    resolve the server's name (retried after admission's client backoff while it has no record),
    then claim the rank: the server asks for the claimant's name (KnownPods.claim) and waits up to
    LOOKUP_WAIT for the answer; no record yet, refused for now, and the member claims again after
    its backoff.  A slice leader's own member joins its own address, and its server knows its own
    pod's address (KnownPods own): no query; the coordinator's upstream member the same."""
    me = name(s, p)
    if p == 0:
        target, known, kind = (name(0, 0) if s else None), top_known, "leader"
    else:
        target, known, kind = name(s, 0), slice_known, "member"
    backoff = admission.client_backoff()
    holds = NegativeHolds()  # a pod's own, as its process's would be
    state = {"address": None if target else "own", "tries": 0, "claim": None, "until": 0.0}

    def again():
        if time.monotonic() >= deadline:
            errors.append(f"{me} did not join")
            return None
        state["tries"] += 1
        return backoff(types.SimpleNamespace(attempt_number=state["tries"]))

    def answered():
        state["claim"] = "answered"

    def step():
        if state["address"] is None:
            tally.local.who = (kind, me)
            try:
                state["address"] = resolve_one(target, [ns], holds=holds, family="ipv4")
            except LookupError:  # its server's record is later than this pod's (asked, or still held)
                return again()
            finally:
                tally.local.who = None
        if state["claim"] == "pending":  # the server is asking for this pod's name
            if time.monotonic() < state["until"]:
                return 0.05
            state["claim"] = None  # no answer within LOOKUP_WAIT: refused for now
            return again()
        if known.address_of(me) == ip(s, p):
            done.append(time.monotonic())
            return None
        if state["claim"] == "answered":  # answered, no record yet: refused for now
            state["claim"] = None
            return again()
        state["claim"], state["until"] = "pending", time.monotonic() + LOOKUP_WAIT
        known.claim(me, answered)
        return 0.05

    return step


def worker(mode, ns, my_slices, pods, appear, t0, deadline, threads, conn):
    admission.raise_nofile_limit()
    tally = Tally()
    known, top = {}, None
    if mode == "new":
        tally.install()
        # As group/session.py makes them: the pods' family known (ipv4), each server's own pod bound
        # to its own address.
        known = {s: KnownPods({name(s, q): name(s, q) for q in range(pods)}, nameservers=[ns], on_claim=True,
                              family="ipv4", own={name(s, 0): ip(s, 0)}).start() for s in my_slices}
        top = KnownPods({name(s, 0): name(s, 0) for s in my_slices}, nameservers=[ns], on_claim=True,
                        family="ipv4", own={name(0, 0): ip(0, 0)} if 0 in my_slices else None).start()
        for s, k in known.items():
            tally.threads[k._thread.ident] = ("check", f"slice {s}")
        tally.threads[top._thread.ident] = ("check", "coordinator")
    done, errors = [], []
    sched = Scheduler(threads)
    n = 0
    for s in my_slices:
        for p in range(pods):
            if mode == "old":
                step = old_pod(ns, s, pods, deadline, done, errors)
            else:
                step = new_pod(ns, s, p, known[s], top, deadline, done, errors, tally)
            sched.add(t0 + appear[s][p], step)
            n += 1
    sched.start(n)
    sched.join()
    for k in [*known.values(), *([top] if top else [])]:
        k.stop()
    conn.send({"tally": {k: dict(c) for k, c in tally.counts.items()}, "done": len(done),
               "last": max(done, default=None), "errors": errors[:5], "n_errors": len(errors)})


def run(mode, args, appear):
    records = [(name(s, p), ip(s, p), 0.0) for s in range(args.slices) for p in range(args.pods)]
    parent, child = multiprocessing.Pipe()
    t0 = time.monotonic() + 3.0 + args.slices * args.pods / 4000  # room to start the threads
    records = [(n, a, t0 + appear[s][p]) for (n, a, _), (s, p) in
               zip(records, [(s, p) for s in range(args.slices) for p in range(args.pods)])]
    dns = multiprocessing.Process(target=dns_process, args=(records, child), daemon=True)
    dns.start()
    ns = parent.recv()
    deadline = t0 + args.spread + args.timeout
    procs, pipes = [], []
    for w in range(args.procs):
        a, b = multiprocessing.Pipe()
        p = multiprocessing.Process(target=worker, daemon=True,
                                    args=(mode, ns, list(range(w, args.slices, args.procs)), args.pods, appear,
                                          t0, deadline, args.threads, b))
        p.start()
        procs.append(p)
        pipes.append(a)
    results = [a.recv() for a in pipes]
    for p in procs:
        p.join()
    last = max((r["last"] for r in results if r["last"] is not None), default=None)
    # The guarantee: when the last pod is through (the new way: the gang start), every name resolves.
    names = [name(s, p) for s in range(args.slices) for p in range(args.pods)]
    parent.send("done")
    stats = parent.recv()
    dns.join()
    n = args.slices * args.pods
    out = {
        "mode": mode,
        "queries": stats["udp"] + stats["tcp"],
        "queries_per_pod": round((stats["udp"] + stats["tcp"]) / n, 2),
        "dropped": stats["dropped"],
        "retransmissions": stats["retransmissions"],
        "queries_for_leader_names": sum(stats["by_name"].get(name(s, 0), 0) for s in range(args.slices)),
        "queries_for_other_names": sum(stats["by_name"].get(name(s, p), 0)
                                       for s in range(args.slices) for p in range(1, args.pods)),
        "early_queries": sum(stats["early"].values()),
        "early_queries_for_leader_names": sum(stats["early"].get(name(s, 0), 0) for s in range(args.slices)),
        "aaaa_queries": stats["by_type"].get("AAAA", 0),
        "dns_cpu_s": round(stats["cpu_s"], 2),
        "by_kind": {k: dict(sum((Counter(r["tally"].get(k, {})) for r in results), Counter())) for k in KINDS},
        "pods_through": sum(r["done"] for r in results),
        "errors": sum(r["n_errors"] for r in results),
        "error_sample": [e for r in results for e in r["errors"]][:5],
        "last_through_s": None if last is None else last - t0,
        "last_record_s": max(max(a) for a in appear),
        "every_name_visible_at_last": last is not None and last >= t0 + max(max(a) for a in appear),
    }
    del names
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=199)
    ap.add_argument("--pods", type=int, default=64, help="pods per slice")
    ap.add_argument("--spread", type=float, default=30.0, help="records appear within this many seconds")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds past the spread before giving up")
    ap.add_argument("--procs", type=int, default=4, help="processes the pods' threads are spread over")
    ap.add_argument("--threads", type=int, default=32, help="threads per process running the pods' steps")
    ap.add_argument("--seed", type=int, default=16)
    args = ap.parse_args(argv)
    res = Results(__file__, sys.argv[1:] if argv is None else argv)
    rng = random.Random(args.seed)
    appear = [[rng.uniform(0, args.spread) for _ in range(args.pods)] for _ in range(args.slices)]
    n = args.slices * args.pods
    runs = {}
    for mode in ("old", "new"):
        runs[mode] = r = run(mode, args, appear)
        print(json.dumps(r), flush=True)
    old, new = runs["old"], runs["new"]
    size = f"{args.slices} x {args.pods} = {n:,} pods, records appearing over {args.spread:g} s"
    key = f"dns.bootstrap{n}"
    old_what = "`--wait slice`: each pod waits for its slice's names and the coordinator's"
    res.add(key, f"DNS queries of a whole bootstrap ({size}), counted at the DNS server: gang start "
            "through the tree, members asking only for their server", Stat.single(new["queries"], "queries"),
            baseline=Stat.single(old["queries"], "queries"), baseline_what=old_what,
            goal=f"<= 2 per pod ({2 * n:,}) plus retries for late records")
    res.add(f"{key}.per_pod", "DNS queries per pod, gang start", Stat.single(new["queries"] / n, "queries"),
            baseline=Stat.single(old["queries"] / n, "queries"), baseline_what=old_what,
            goal="<= 2 plus retries for late records")
    res.add(f"{key}.early", "of the gang start's queries: asked before the name's record was visible "
            "(members polling for a slice leader whose pod came later)", Stat.single(new["early_queries"], "queries"),
            baseline=Stat.single(old["early_queries"], "queries"), baseline_what=old_what)
    res.add(f"{key}.retransmissions", "of the gang start's queries: UDP retransmissions (an id sent again from the same socket)",
            Stat.single(new["retransmissions"], "queries"),
            baseline=Stat.single(old["retransmissions"], "queries"), baseline_what=old_what)
    if new["last_through_s"] is not None and old["last_through_s"] is not None:
        res.add(f"{key}.after_last_record", "last record visible -> last pod through (gang start: every "
                "member joined; its start needs every name)",
                Stat.single(new["last_through_s"] - new["last_record_s"], "s"),
                baseline=Stat.single(old["last_through_s"] - old["last_record_s"], "s"),
                baseline_what="`--wait slice`: the last pod's wait done")
    # Where every query of the gang start comes from: per kind of lookup, counted where it is made.
    by = new["by_kind"]
    total = {o: sum(by[k].get(o, 0) for k in KINDS) for o in OUTCOMES}
    res.add(f"{key}.first_asks", "of the gang start's queries: first asks, one per asker and name (a member: "
            "its slice leader's; a leader: the coordinator's; a server: each claimant's but its own pod's)",
            Stat.single(total["first"], "queries"), goal=f"<= 2 per pod ({2 * n:,})")
    res.add(f"{key}.again_after_miss", "of the gang start's queries: a name asked again by the same asker after "
            "it had no record (retries for late records)", Stat.single(total["again_after_miss"], "queries"))
    res.add(f"{key}.again_after_answer", "of the gang start's queries: a name asked again by the same asker "
            "after it was answered", Stat.single(total["again_after_answer"], "queries"), goal="0")
    res.add(f"{key}.aaaa", "of the gang start's queries: AAAA (every pod's family known: IPv4)",
            Stat.single(new["aaaa_queries"], "queries"), baseline=Stat.single(old["aaaa_queries"], "queries"),
            baseline_what=old_what, goal="0")
    outcome_what = {"first": "first asks", "again_after_miss": "asked again after a miss (late record)",
                    "again_after_answer": "asked again after an answer",
                    "retransmitted": "retransmitted (sent again within one lookup)"}
    for k, what in KINDS.items():
        for o in OUTCOMES:
            res.add(f"dns.bootstrap_by_kind{n}.{k}.{o}", f"{what}: {outcome_what[o]}",
                    Stat.single(by[k].get(o, 0), "queries"))
    counted = sum(total.values())
    res.note(f"gang start: {total['first']:,} first asks + {total['again_after_miss']:,} asked again after a miss "
             f"+ {total['again_after_answer']:,} after an answer + {total['retransmitted']:,} retransmitted = "
             f"{counted:,} queries counted where they were made; the DNS server counted {new['queries']:,}, "
             f"{new['retransmissions']:,} of them with a repeated id")
    res.note(f"the DNS server's CPU time: {new['dns_cpu_s']:g} s for the gang start's queries, "
             f"{old['dns_cpu_s']:g} s for the slice wait's")
    ok = all(r["errors"] == 0 and r["pods_through"] == n and r["dropped"] == 0 for r in runs.values())
    if counted != new["queries"]:
        ok = False
        res.note(f"NOT every query accounted for: {counted:,} counted where made, {new['queries']:,} at the server")
    if not ok:
        res.note("NOT every pod came through (or the server dropped queries): "
                 + "; ".join(f"{m}: {r['pods_through']} through, {r['errors']} errors {r['error_sample'][:2]}, "
                             f"{r['dropped']} dropped" for m, r in runs.items()))
    res.note(f"{args.procs} processes x {args.threads} threads run the pods' steps; the embedded DNS server in "
             "a process of its own")
    res.write()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
