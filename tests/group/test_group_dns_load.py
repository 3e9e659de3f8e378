"""DNS load of a gang start through the tree (docs/peers.md, DNS load): a few hundred real members,
each from its own loopback address, their records appearing over a few seconds at a real DNS server.

Each member asks only for its slice leader's name; each server asks for the name of each pod that
joins it, when it joins; the start says every name of the world resolved (dns="all").  The queries
counted at the server stay near 2 per pod, where waiting for the slice before joining costs ~S+1."""

import functools
import random
import threading
import time
from collections import Counter

import dns.message as dns_message
import pytest
from grouphelpers import WAIT, fqdn

from jobset_runtime.addresses import free_port
from jobset_runtime.admission import KnownPods
from jobset_runtime.errors import PeersTimeout
from jobset_runtime.group import GroupMember, GroupServer, MemberId, MemberPhase
from jobset_runtime.group.relay import SliceLeader
from jobset_runtime.local.dns import DnsServer
from jobset_runtime.peers import NegativeHolds, resolve_batch, resolve_one

SLICES, PER_SLICE = 4, 48
FAST = {"heartbeat": 0.5, "deadline": 5.0}
SPREAD = 3.0  # seconds over which the members' records (and wrappers) appear
LATE = 2.0  # one member's record appears this long after its wrapper started


def address(rank):
    s, j = divmod(rank, PER_SLICE)
    return f"127.0.{s + 1}.{j + 1}"


@pytest.fixture
def dns():
    server = DnsServer(zones=["svc.cluster.local"])
    # Every query's name and id, as the server reads them: a retransmission repeats its id.
    server.asked = Counter()
    answer = server._answer_safely

    def counted(wire, *, udp):
        msg = dns_message.from_wire(wire)
        server.asked[(msg.question[0].name.to_text(omit_final_dot=True).lower(), msg.id)] += 1
        return answer(wire, udp=udp)

    server._answer_safely = counted
    server.start()
    yield server
    server.stop()


def groups_late(n):
    """The pod whose record comes LATE seconds after its wrapper started (bootstrap's)."""
    return f"pod-{PER_SLICE + 7}"


def bootstrap(dns, token, bound=True):
    """The tree of a SLICES x PER_SLICE job whose pods' records appear over SPREAD seconds; returns
    (members, when each start was seen, the monotonic time each name became visible, the late pod)."""
    ns = [dns.nameserver]
    world = [MemberId(r, f"pod-{r}") for r in range(SLICES * PER_SLICE)]
    groups = [world[s * PER_SLICE:(s + 1) * PER_SLICE] for s in range(SLICES)]
    leaders = [g[0] for g in groups]
    port = free_port(*{address(m.rank) for m in leaders}, count=2)  # the slice leaders on port, the top on port + 1

    def resolve():  # each pod's own (a process's negative holds are its pod's)
        return functools.partial(resolve_one, nameservers=ns, holds=NegativeHolds())

    rng = random.Random(16)
    t0 = time.monotonic()
    visible = {}
    # The leaders' pods first (as the coordinator's and leaders' wrappers have to be up to be
    # joined at all), every other pod at a random moment within SPREAD.
    for m in world:
        delay = 0.0 if m in leaders else rng.uniform(0.2, SPREAD)
        visible[m.pod] = t0 + delay
        dns.set(fqdn(m.pod), address(m.rank), visible_after=delay)
    late = groups[1][7]
    assert late.pod == groups_late(len(world))
    visible[late.pod] = t0 + SPREAD + LATE
    dns.set(fqdn(late.pod), address(late.rank), visible_after=SPREAD + LATE)

    def known(ws, me):  # as group/session.py makes it: its own pod bound to its own address
        return KnownPods({m.pod: fqdn(m.pod) for m in ws}, nameservers=ns, on_claim=True,
                         own={me.pod: address(me.rank)}) if bound else None

    top = GroupServer(bind=(address(0), port + 1), world=leaders, token=token, attempt=0,
                      slices=groups, known=known(leaders, leaders[0]), **FAST)
    servers = [top]
    top.start()
    for g in groups:
        sl = SliceLeader(bind=(address(g[0].rank), port), slice_world=g, upstream=(fqdn(world[0].pod), port + 1),
                         me=g[0], leaders=leaders, token=token, attempt=0, join_timeout=WAIT,
                         barrier_timeout=WAIT, known=known(g, g[0]), source=address(g[0].rank), resolve=resolve(), **FAST)
        sl.start()
        servers.append(sl)
    members, started, errors = [], {}, []

    def wrapper(m, g):
        # A leader's pod joins its own server at its own address; the others ask DNS for their leader.
        target = address(g[0].rank) if m == g[0] else fqdn(g[0].pod)
        member = GroupMember(server=(target, port), me=m, world=g, token=token, attempt=0,
                             source=address(m.rank), resolve=resolve(), **FAST)
        members.append(member)
        try:
            member.join(WAIT + SPREAD + LATE)
            started[m.pod] = time.monotonic()
        except (PeersTimeout, Exception) as e:  # reported by the test
            errors.append(f"{m}: {e}")

    timers = []
    for g in groups:
        for m in g:
            # The wrapper starts once the pod has its address: its own record's moment (the late
            # pod's wrapper starts on time; only its record is late).
            start_at = 0.0 if m in leaders else min(visible[m.pod] - t0, SPREAD)
            t = threading.Timer(start_at, wrapper, (m, g))
            t.start()
            timers.append(t)
    return servers, members, started, errors, visible, timers


@pytest.mark.parametrize("bound", [True, False])
def test_a_tree_gang_start_asks_dns_about_twice_per_pod_and_starts_only_once_every_name_resolves(dns, token, bound):
    n = SLICES * PER_SLICE
    servers, members, started, errors, visible, timers = bootstrap(dns, token, bound)
    try:
        for t in timers:
            t.join()
        deadline = time.monotonic() + WAIT + SPREAD + LATE
        while len(started) + len(errors) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not errors, errors[:3]
        assert len(started) == n
        queries, asked = dns.stats["udp"], Counter(dns.asked)  # before the checks below ask again
        if bound:
            # The late pod's record held the whole gang back: nobody started before every name resolved.
            assert min(started.values()) >= max(visible.values())
            names = [fqdn(f"pod-{r}") for r in range(n)]
            assert len(resolve_batch(names, [dns.nameserver]).resolved) == n
            # Every server checked the names of the pods that joined it, and said so in the start.
            assert all(m.names_resolved for m in members)
            assert all(m.phase is MemberPhase.RUNNING for m in members)
            # At most 2 per pod: a member asks for its leader's name (a leader's own member joins its
            # own address: none; its upstream member asks for the coordinator's), a server for each
            # joining pod's but its own (bound to its own address).  Counted as asks (a query and
            # its retransmissions, which repeat its id: none expected, a reply 2 s late is not):
            asks = Counter(name for name, _ in asked)
            late = fqdn(groups_late(n))
            for r in range(n):
                s, j = divmod(r, PER_SLICE)
                name = fqdn(f"pod-{r}")
                if name == late:
                    assert asks[name] >= 2  # claimed before its record, claimed again: asked again
                elif j:
                    assert asks[name] == 1, (name, asks[name])  # its slice server, when it joined
                elif s:
                    assert asks[name] == PER_SLICE, (name, asks[name])  # its members, and the coordinator
                else:  # the coordinator: its slice's members and every leader's upstream member
                    assert asks[name] == PER_SLICE - 1 + SLICES, (name, asks[name])
            # 2n - 1 first asks: the coordinator's upstream member asks for its own name here (in a pod it
            # joins its own address); the late pod's name counted once.
            assert sum(asks.values()) - (asks[late] - 1) == 2 * n - 1
            # ... the late pod's claims, each after its backoff, add a query each until its record is there.
            assert asks[late] <= 2 + (LATE + SPREAD) / 0.1
            assert queries - sum(asks.values()) <= 3, "retransmissions"  # a server starved past 2 s
            # Waiting for the slice first would be (PER_SLICE + 1) per pod at the very least.
            assert queries < n * (PER_SLICE + 1) / 10
        else:
            # Servers that check no address cannot vouch for the names: the wrapper waits as before.
            assert not any(m.names_resolved for m in members)
    finally:
        for m in members:
            m.close()
        for s in reversed(servers):
            s.stop()
