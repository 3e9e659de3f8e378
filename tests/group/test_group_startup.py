"""The gang start's own costs (docs/fail-fast.md, Start-up cost): no round trip lost to a backoff
that the protocol does not need.  Every pod's wrapper starts at about the same moment, so members
reach the coordinator before its server runs, and the coordinator learns each pod's address only
when the pod claims its rank."""

import functools
import socket
import threading
import time

import pytest
from grouphelpers import WAIT, fqdn, join_all, make_world, wait_until

from jobset_runtime.addresses import free_port
from jobset_runtime.admission import KnownPods
from jobset_runtime.group import GroupMember, GroupServer, MemberPhase, Phase
from jobset_runtime.group.listener import open_listener
from jobset_runtime.peers import resolve_one

FAST = {"heartbeat": 0.1, "deadline": 5.0}


def test_a_pods_first_claim_waits_for_its_name_instead_of_being_turned_away(token, pod_dns):
    """As the wrappers' servers run, a pod's name is asked for when the pod first claims its rank
    (on_claim), not before: the claim waits for that answer, so no pod whose record is there is
    turned away once before it gets in, and each rank is still bound to its pod's address."""
    world = make_world(6)
    source = {m.rank: f"127.0.3.{m.rank + 1}" for m in world}
    for m in world:
        pod_dns.set(fqdn(m.pod), source[m.rank])
    known = KnownPods({m.pod: fqdn(m.pod) for m in world}, nameservers=[pod_dns.nameserver], on_claim=True)
    with GroupServer(bind=("127.0.0.1", 0), world=world, token=token, attempt=0, known=known, **FAST) as srv:
        members = [GroupMember(server=srv.address, me=m, world=world, token=token, attempt=0,
                               source=source[m.rank], **FAST) for m in world]
        join_all(members)
        assert srv.phase is Phase.RUNNING
        # Every rank bound to its pod's address, and the start vouches for every name...
        assert {c.peer[0] for c in srv._conns.values()} == set(source.values())
        assert all(m.names_resolved for m in members)
        # ... with no join refused for now, so no member slept in its backoff.
        assert srv.claims.total == 0
        assert [m._backoff.tries for m in members] == [0] * len(world)
        for m in members:
            m.close()


def test_a_wrong_address_is_still_refused_after_the_lookup(token, pod_dns):
    world = make_world(2)
    pod_dns.set(fqdn("pod-0"), "127.0.0.1")
    pod_dns.set(fqdn("pod-1"), "127.0.0.3")
    known = KnownPods({m.pod: fqdn(m.pod) for m in world}, nameservers=[pod_dns.nameserver], on_claim=True)
    with GroupServer(bind=("127.0.0.1", 0), world=world, token=token, attempt=0, known=known, **FAST) as srv:
        # A token holder on another pod's address claiming pod-1's rank: refused once its name is known.
        thief = GroupMember(server=srv.address, me=world[1], world=world, token=token, attempt=0,
                            source="127.0.0.5", **FAST)
        with pytest.raises(Exception, match="pod pod-1 has address 127.0.0.3, not 127.0.0.5"):
            thief.join(1.5)
        assert srv.claims.total >= 1
        assert srv.phase is Phase.WAITING


def test_members_that_connect_before_the_server_runs_wait_in_its_backlog(token):
    world = make_world(3)
    # What the coordinator's wrapper does first: listen, then load the server (asyncio) and run it.
    listener = open_listener(("127.0.0.1", 0), len(world))
    srv = GroupServer(bind=listener.getsockname(), world=world, token=token, attempt=0, listener=listener, **FAST)
    members = [GroupMember(server=listener.getsockname(), me=m, world=world, token=token, attempt=0, **FAST)
               for m in world]
    joining = threading.Thread(target=join_all, args=(members,))
    joining.start()
    try:
        # Their connections are accepted by the kernel while nothing reads them yet.
        time.sleep(0.3)
        assert all(m.phase is MemberPhase.CONNECTING for m in members)
        srv.start()
        joining.join(WAIT)
        assert all(m.phase is MemberPhase.RUNNING for m in members)
        # Nobody was refused and sent into a backoff.
        assert [(m._backoff.tries, m._backoff.not_listening_tries) for m in members] == [(0, 0)] * 3
    finally:
        for m in members:
            m.close()
        srv.stop()
        joining.join(WAIT)


def test_a_connection_refused_is_tried_again_without_a_dns_query_each_time(token, pod_dns):
    world = make_world(2)
    port = free_port("127.0.0.1")
    pod_dns.set(fqdn("pod-0"), "127.0.0.1")
    resolve = functools.partial(resolve_one, nameservers=[pod_dns.nameserver])
    member = GroupMember(server=(fqdn("pod-0"), port), me=world[1], world=world, token=token, attempt=0,
                         resolve=resolve, **FAST)
    joining = threading.Thread(target=join_all, args=([member],))
    joining.start()
    srv = None
    try:
        # Nothing listens yet: the wrapper of the coordinator's pod is starting.
        wait_until(lambda: member._backoff.not_listening_tries >= 3, "three refused connections")
        srv = GroupServer(bind=("127.0.0.1", port), world=world, token=token, attempt=0, **FAST)
        srv.start()
        own = GroupMember(server=("127.0.0.1", port), me=world[0], world=world, token=token, attempt=0, **FAST)
        own.join(WAIT)
        joining.join(WAIT)
        assert member.phase is MemberPhase.RUNNING
        # The address answered each time (a RST): it was kept, not asked for again per refusal.
        refused = member._backoff.not_listening_tries
        assert pod_dns.stats["udp"] < refused + 1, (pod_dns.stats, refused)
        # A refusal by nothing listening is not one by the server: the server's backoff never ran.
        assert member._backoff.tries == 0
        own.close()
    finally:
        member.close()
        if srv is not None:
            srv.stop()
        joining.join(WAIT)


def test_a_member_still_connecting_sends_its_hello_once_the_connection_is_up(token):
    """Usually the connection is up when connect() returns and the hello goes at once.  Here the
    server's accept queue is full, so the kernel drops the member's SYN: connect() and the first
    send() find the connection still being made (the CONNECT stage), and the hello goes when the
    retransmitted SYN gets through, once the server drains its queue."""
    from jobset_runtime.group.member import _Stage

    world = make_world(1)
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)  # an accept queue of one
    listener.setblocking(False)
    address = listener.getsockname()
    fillers = []
    for _ in range(3):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        s.connect_ex(address)
        fillers.append(s)
    srv = GroupServer(bind=address, world=world, token=token, attempt=0, listener=listener, **FAST)
    # Past the first SYN retransmission (1 s), however slowly the server comes up.
    member = GroupMember(server=address, me=world[0], world=world, token=token, attempt=0, connect_timeout=10.0,
                         **FAST)
    joining = threading.Thread(target=join_all, args=([member],))
    joining.start()
    try:
        wait_until(lambda: member._stage is _Stage.CONNECT, "the member waiting for its connection")
        time.sleep(0.2)
        assert member._stage is _Stage.CONNECT and member.phase is MemberPhase.CONNECTING
        srv.start()
        joining.join(WAIT)
        assert member.phase is MemberPhase.RUNNING
        # Joined on that first connection: no try failed, none was repeated.
        assert (member._backoff.tries, member._backoff.not_listening_tries) == (0, 0)
    finally:
        member.close()
        srv.stop()
        joining.join(WAIT)
        for s in fillers:
            s.close()


def test_a_server_given_by_name_is_looked_up_on_each_try_an_address_parsed_once(token):
    """Without resolve(), a name goes to the system's resolver on every try (its answer may
    change); an address is parsed once and kept for the tries after."""
    world = make_world(2)
    host = socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)[0][4][0]
    with GroupServer(bind=(host, 0), world=world, token=token, attempt=0, **FAST) as srv:
        port = srv.address[1]
        by_name = GroupMember(server=("localhost", port), me=world[0], world=world, token=token, attempt=0, **FAST)
        by_address = GroupMember(server=(host, port), me=world[1], world=world, token=token, attempt=0, **FAST)
        try:
            join_all([by_name, by_address])
            assert by_name._numeric == (("localhost", port), None)
            assert by_address._numeric[0] == (host, port) and by_address._numeric[1][1][:2] == (host, port)
        finally:
            by_name.close()
            by_address.close()


def test_a_member_joins_a_server_at_an_ipv6_address(token):
    """An IPv6 address is parsed (once) by getaddrinfo, an IPv4 one without it: both connect."""
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            pass
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    world = make_world(2)
    with GroupServer(bind=("::1", 0), world=world, token=token, attempt=0, **FAST) as srv:
        port = srv.address[1]
        members = [GroupMember(server=("::1", port), me=m, world=world, token=token, attempt=0, source="::1", **FAST)
                   for m in world]
        try:
            join_all(members)
            assert all(m._numeric[1][0] == socket.AF_INET6 for m in members)
        finally:
            for m in members:
                m.close()


def test_a_server_refusing_for_seconds_costs_a_query_per_doubling_not_per_retry(token, pod_dns):
    """A server whose pod has its record seconds before its wrapper listens (an image still
    pulling): its address, given back by DNS unchanged, is kept twice as long each time."""
    world = make_world(2)
    port = free_port()
    pod_dns.set(fqdn("pod-0"), "127.0.0.1")
    resolve = functools.partial(resolve_one, nameservers=[pod_dns.nameserver])
    member = GroupMember(server=(fqdn("pod-0"), port), me=world[1], world=world, token=token, attempt=0,
                         resolve=resolve, **FAST)
    joining = threading.Thread(target=join_all, args=([member],))
    joining.start()
    srv = None
    try:
        start = time.monotonic()
        wait_until(lambda: time.monotonic() - start >= 7.0, "seven seconds of refusals", timeout=WAIT + 10)
        refused, asked, kept = member._backoff.not_listening_tries, pod_dns.stats["udp"], member._keep_refused
        srv = GroupServer(bind=("127.0.0.1", port), world=world, token=token, attempt=0, **FAST)
        srv.start()
        own = GroupMember(server=("127.0.0.1", port), me=world[0], world=world, token=token, attempt=0, **FAST)
        own.join(WAIT)
        joining.join(WAIT)
        assert member.phase is MemberPhase.RUNNING
        # Kept 1 s after the first lookup, 2 s after the second, 4 s after the third: at most 3 lookups
        # in 7 s, one per ~10 s once at KEEP_REFUSED_MAX (a fixed second: one per 4 s for as long).
        assert refused >= 8, refused
        assert 2 <= asked <= 3, (asked, refused)
        assert kept == 2.0 ** (asked - 1), (kept, asked)
        own.close()
    finally:
        member.close()
        if srv is not None:
            srv.stop()
        joining.join(WAIT)


def test_a_member_whose_join_gave_up_closes_at_once_when_closed_again(token):
    """join() closes a member that timed out, stopping its reactor; its owner then closes it too
    (the wrapper does, before it exits 69).  That second close has no reactor thread left to run a
    queued close on, so it closes the socket itself instead of waiting for one: a coordinator's pod
    used to sit that wait (the reactor's 5 s stop) out with its server still up, telling every
    other member that its own pod was missing."""
    world = make_world(2)
    with GroupServer(bind=("127.0.0.1", 0), world=world, token=token, attempt=0) as srv:
        m = GroupMember(server=srv.address, me=world[0], world=world, token=token, attempt=0)
        with pytest.raises(Exception, match="1 of 2 group members had not joined|did not start"):
            m.join(1.5)
        assert not m._reactor.running
        started = time.monotonic()
        m.close()
        assert m.phase is MemberPhase.CLOSED and m._sock is None
        assert time.monotonic() - started < 4.0  # not the 5 s fallback wait of a queued close
