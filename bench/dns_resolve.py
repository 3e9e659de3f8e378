"""Resolve every pod of a 199x64 JobSet (12,736 names) against dnsmasq on loopback.

Prints names/s for jobset_runtime.peers.resolve_batch beside two baselines
measured in the same run on the same server:
  * sequential: dnspython `dns.query.udp`, one name after another;
  * asyncio:    dnspython's `dns.asyncio.Resolver`, all queries gathered at once.
Baselines are time-boxed to a sample of the names (their rate is extrapolated
and labelled so).  Every name of the batch run must come back with its own IP.

With `--loss 0.05` it also measures the batch against the embedded DNS server
(jobset_runtime.local.dns, in a child process) dropping that fraction of UDP
queries: a server slower than dnsmasq, so that figure is bounded by the server.

    python bench/dns_resolve.py [--runs 5] [--loss 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "peers"))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dnsfixtures  # noqa: E402
from results import Results, Stat  # noqa: E402

from jobset_runtime.peers import resolve_batch  # noqa: E402

SUB = "js.default.svc.cluster.local"


def jobset_names(slices=199, pods=64):
    names = [f"js-slice-{j}-{p}.{SUB}" for j in range(slices) for p in range(pods)]
    return {n: f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" for i, n in enumerate(names)}


def batch(hosts, server):
    t = time.perf_counter()
    got = resolve_batch(list(hosts), [server])
    dt = time.perf_counter() - t
    wrong = {n for n, ip in hosts.items() if got.resolved.get(n) != ip}
    assert not wrong, f"{len(wrong)} names missing or wrong, e.g. {sorted(wrong)[:3]}: {got.failed}"
    return len(hosts) / dt, got, dt


def sequential(hosts, server, budget=2.0):
    import dns.message
    import dns.query

    names = list(hosts)
    done = 0
    t = time.perf_counter()
    while done < len(names) and time.perf_counter() - t < budget:
        reply = dns.query.udp(dns.message.make_query(names[done], "A"), server[0], port=server[1], timeout=2)
        assert reply.answer[0][0].address == hosts[names[done]]
        done += 1
    return done / (time.perf_counter() - t), done


def asyncio_resolver(hosts, server, sample=2000):
    import dns.asyncresolver

    names = list(hosts)[:sample]

    async def run():
        res = dns.asyncresolver.Resolver(configure=False)
        res.nameservers = [server[0]]
        res.port = server[1]
        res.lifetime = 30
        t = time.perf_counter()
        answers = await asyncio.gather(*(res.resolve(n, "A") for n in names))
        dt = time.perf_counter() - t
        assert all(a[0].address == hosts[n] for a, n in zip(answers, names))
        return len(names) / dt

    return asyncio.run(run()), len(names)


def _embedded_server(hosts, loss, conn):
    from jobset_runtime.local.dns import DnsServer

    with DnsServer(zones=["cluster.local"]) as server:
        for n, ip in hosts.items():
            server.set(n, ip)
        server.drop_rate = loss
        conn.send(server.address)
        conn.recv()  # until the parent is done
        conn.send(dict(server.stats))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--loss", type=float, default=0.0, help="also measure with this UDP loss (embedded server)")
    args = ap.parse_args(argv)
    res = Results(__file__, argv)
    hosts = jobset_names()
    print(f"{len(hosts)} names, {os.cpu_count()} CPUs")
    if dnsfixtures.find_dnsmasq() is None:
        print("SKIP: dnsmasq is not installed (Debian: apt-get install dnsmasq-base)")
        return 0
    with tempfile.TemporaryDirectory() as tmp, dnsfixtures.Dnsmasq(tmp, hosts) as dm:
        server = dm.address
        batch(hosts, server)  # warm-up: dnsmasq hashes its hosts file on first use
        rates, secs = [], []
        for i in range(args.runs):
            rate, got, dt = batch(hosts, server)
            rates.append(rate)
            secs.append(dt)
            print(f"  batch run {i + 1}: {rate:,.0f} names/s ({got.queries - len(hosts)} retransmissions)")
        seq, seq_n = sequential(hosts, server)
        aio, aio_n = asyncio_resolver(hosts, server)
    best, median = max(rates), sorted(rates)[len(rates) // 2]
    print(f"dnsmasq, all {len(hosts)} names resolved to the right IP in every run")
    print(f"  peers.resolve_batch          {median:>10,.0f} names/s (median of {len(rates)}, best {best:,.0f})")
    print(f"  dns.query.udp sequential     {seq:>10,.0f} names/s (sample of {seq_n}, extrapolated)")
    print(f"  dns.asyncresolver gather     {aio:>10,.0f} names/s (sample of {aio_n}, extrapolated)")
    print(f"  ratio: {median / seq:,.1f}x sequential, {median / aio:,.1f}x asyncio resolver")
    what = f"`peers.resolve_batch`: all {len(hosts):,} pod names of a 199 x 64 JobSet against dnsmasq on loopback"
    res.add("dns.batch", what, Stat.median(rates, "names/s"), spread=[Stat.min(rates, "names/s")],
            baseline=Stat.single(seq, "names/s"), goal=">= 20,000 names/s",
            baseline_what=f"dnspython `dns.query.udp` one name after another (a time-boxed sample of {seq_n}, extrapolated)")
    res.add("dns.batch.vs_asyncio", what, Stat.median(rates, "names/s"), baseline=Stat.single(aio, "names/s"),
            baseline_what=f"dnspython `dns.asyncresolver`, {aio_n} queries gathered at once (extrapolated)")
    res.add("dns.batch.seconds", f"time to resolve all {len(hosts):,} names", Stat.median(secs, "s"),
            spread=[Stat.max(secs, "s")])
    if args.loss:
        parent, child = multiprocessing.Pipe()
        proc = multiprocessing.Process(target=_embedded_server, args=(hosts, args.loss, child))
        proc.start()
        try:
            server = parent.recv()
            rate, got, _ = batch(hosts, server)
            parent.send("done")
            stats = parent.recv()
        finally:
            proc.join(10)
        print(f"embedded server dropping {args.loss:.0%} of UDP queries ({stats['dropped']} dropped): "
              f"{rate:,.0f} names/s, all {len(hosts)} resolved, {got.queries - len(hosts)} retransmissions")
        res.add("dns.batch.loss", f"the same against the embedded DNS server dropping {args.loss:.0%} of UDP queries "
                "(every name resolved through retransmission; bounded by that server)", Stat.single(rate, "names/s"))
    res.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
