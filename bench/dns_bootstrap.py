"""DNS load of a whole bootstrap: every query the pods of a S x P tpu-multislice JobSet send while they
come up, counted at the DNS server, the old way and the new way in one run (docs/peers.md, DNS load).

Each pod's record appears at a random moment within --spread seconds, as a real cluster's do, and its
wrapper starts at that moment.  The embedded DNS server (jobset_runtime.local.dns) runs in a process of
its own and counts every datagram it receives; the pods' wrappers are threads spread over --procs
processes, each doing what the product does:

  old: `jobset-run --wait slice`: peers.wait_for_hosts(its slice's names + the coordinator's), the
       baseline (it leaves out the group channel's own lookups that came after it);
  new: the group's gang start through the tree: a member asks peers.resolve_one for its slice leader's
       name (a leader: the coordinator's), retrying after admission.Backoff while it has no record,
       then claims its rank at its server, whose KnownPods(on_claim=True) asks for the claimant's name
       (server._bound's check, called here directly in place of the TCP handshake).  The start is
       given once every claim is bound; at that moment every name must already resolve.

Each process holds the KnownPods of its own slices' leaders, and one for its share of the leaders'
group (the same queries as the coordinator's one KnownPods: one per leader that claims).

    PYTHONPATH=. python bench/dns_bootstrap.py [--slices 199] [--pods 64] [--spread 30] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import threading
import time

from jobset_runtime import admission
from jobset_runtime.admission import KnownPods
from jobset_runtime.peers import resolve_batch, resolve_one, wait_for_hosts

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

    server = DnsServer(zones=[ZONE]).start()
    now = time.monotonic()
    for n, a, at in records:
        server.set(n, a, visible_after=max(0.0, at - now))
    conn.send(server.nameserver)
    conn.recv()  # done
    conn.send(dict(server.stats))
    server.stop()


def old_pod(ns, s, p, slices_pods, deadline):
    names = [name(s, q) for q in range(slices_pods)]
    if s != 0:
        names.append(name(0, 0))  # the coordinator
    wait_for_hosts(names, nameservers=[ns], timeout=deadline - time.monotonic(), progress_interval=None)


late = [0, 0]  # per process: target lookups that found no record yet; repeated claims
claimed: dict = {}


def new_pod(ns, s, p, slice_known, top_known, deadline):
    """One member's join (and a leader's upstream join), as GroupMember + server._bound do it."""
    def join(target, known, pod, my_ip):
        backoff, address = admission.Backoff(), None
        while time.monotonic() < deadline:
            if address is None:
                try:
                    address = resolve_one(target, [ns])
                except LookupError:  # its server's record is later than this pod's
                    late[0] += 1
                    backoff.sleep(deadline)
                    continue
            if known.address_of(pod) == my_ip:
                return
            if claimed.get(pod):
                late[1] += 1  # asked again: the first check's answer was not back before the retry
            claimed[pod] = True
            known.refresh(pod)  # refused for now; the server asks for the claimant's name
            backoff.sleep(deadline)
        raise TimeoutError(f"{pod} did not join")

    me = name(s, p)
    if p == 0:  # a leader: its own member joins its own address (no query), it joins the coordinator
        join(name(0, 0), top_known, me, ip(s, p))
    else:
        join(name(s, 0), slice_known, me, ip(s, p))
    join_at = time.monotonic()
    return join_at


def worker(mode, ns, my_slices, pods, appear, t0, deadline, conn):
    # The pods yield to the DNS server (and to everything else on the machine): what is counted is
    # what the wrappers' logic sends, not retransmissions of a server starved of CPU by its clients.
    os.nice(19)
    threading.stack_size(256 * 1024)
    admission.raise_nofile_limit()
    known = {s: KnownPods({name(s, q): name(s, q) for q in range(pods)}, nameservers=[ns], on_claim=True).start()
             for s in my_slices} if mode == "new" else {}
    top = KnownPods({name(s, 0): name(s, 0) for s in my_slices}, nameservers=[ns], on_claim=True).start() \
        if mode == "new" else None
    done, errors = [], []

    def pod(s, p):
        time.sleep(max(0.0, t0 + appear[s][p] - time.monotonic()))
        try:
            if mode == "old":
                old_pod(ns, s, p, pods, deadline)
            else:
                new_pod(ns, s, p, known[s], top, deadline)
            done.append(time.monotonic())
        except Exception as e:
            errors.append(f"{name(s, p)}: {e}")

    threads = [threading.Thread(target=pod, args=(s, p), daemon=True) for s in my_slices for p in range(pods)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in [*known.values(), *([top] if top else [])]:
        k.stop()
    conn.send({"late_lookups": late[0], "repeat_claims": late[1], "done": len(done), "last": max(done, default=None), "errors": errors[:5], "n_errors": len(errors)})


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
                                          t0, deadline, b))
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
        "member_lookups_before_the_record": sum(r["late_lookups"] for r in results),
        "repeated_claims": sum(r["repeat_claims"] for r in results),
        "pods_through": sum(r["done"] for r in results),
        "errors": sum(r["n_errors"] for r in results),
        "error_sample": [e for r in results for e in r["errors"]][:5],
        "last_through_s": None if last is None else round(last - t0, 2),
        "last_record_s": round(max(max(a) for a in appear), 2),
        "every_name_visible_at_last": last is not None and last >= t0 + max(max(a) for a in appear),
    }
    del names
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=199)
    ap.add_argument("--pods", type=int, default=64, help="pods per slice")
    ap.add_argument("--spread", type=float, default=30.0, help="records appear within this many seconds")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds past the spread before giving up")
    ap.add_argument("--procs", type=int, default=4, help="processes the pods' threads are spread over")
    ap.add_argument("--modes", default="old,new")
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    appear = [[rng.uniform(0, args.spread) for _ in range(args.pods)] for _ in range(args.slices)]
    n = args.slices * args.pods
    report = {"bench": "dns_bootstrap", "slices": args.slices, "pods_per_slice": args.pods, "pods": n,
              "spread_s": args.spread, "procs": args.procs, "goal_queries": 2 * n, "runs": []}
    for mode in args.modes.split(","):
        load = os.getloadavg()
        r = run(mode, args, appear)
        r["loadavg_before"] = [round(x, 2) for x in load]
        r["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        report["runs"].append(r)
        print(json.dumps(r), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if all(r["errors"] == 0 and r["pods_through"] == n for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
