"""The gang start's own costs (docs/fail-fast.md, Start-up cost): no round trip lost to a backoff
that the protocol does not need.  Every pod's wrapper starts at about the same moment, so members
reach the coordinator before its server runs, and the coordinator learns each pod's address only
when the pod claims its rank."""

import functools
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
