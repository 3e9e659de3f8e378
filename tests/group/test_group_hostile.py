"""What the group refuses: wrong tokens, garbage, oversize frames, replays, stale attempts
and epochs; each one without harm to the group that is running."""

import socket
import threading
import time

import pytest
from grouphelpers import (
    WAIT,
    Proc,
    RecordingProxy,
    SlowClients,
    closed_by_peer,
    fqdn,
    flood_descriptors,
    join_all,
    low_nofile,
    make_world,
    raw_connect,
    wait_until,
)

from jobset_runtime.admission import WARN_EVERY, KnownPods
from jobset_runtime.errors import ConfigError, PeersTimeout
from jobset_runtime.group import (
    GroupAborted,
    GroupMember,
    GroupServer,
    MemberId,
    MemberPhase,
    Phase,
    wire,
)
from jobset_runtime.supervisor import read_termination_message, write_termination_message

FAST = {"heartbeat": 0.1, "deadline": 2.0}
# For the floods run from this process: their threads share the interpreter with the servers and
# members, so liveness gets a generous deadline; what those tests test is admission, not heartbeats.
LIVE = {"heartbeat": 0.2, "deadline": 10.0}


@pytest.fixture
def group(token):
    """A running group of 3 on loopback, server in this process."""
    world = make_world(3)
    srv = GroupServer(bind=("127.0.0.1", 0), world=world, token=token, attempt=1, **FAST)
    srv.start()
    members = [GroupMember(server=srv.address, me=m, world=world, token=token, attempt=1, **FAST) for m in world]
    join_all(members)
    yield srv, members, world
    for m in members:
        m.close()
    srv.stop()


def still_works(srv, members):
    """The group is unharmed: nobody aborted, and a real failure still reaches everyone."""
    assert srv.phase is Phase.RUNNING
    assert not any(m.aborted.is_set() for m in members)
    members[1].report_failure(3, "real failure")
    for m in members:
        assert m.aborted.wait(WAIT) and m.abort_cause.rank == 1 and m.abort_cause.code == 3


def test_no_token_refused_unless_insecure():
    world = make_world(1)
    with pytest.raises(ConfigError, match="--insecure"):
        GroupServer(bind=("127.0.0.1", 0), world=world, token=None, attempt=0)
    with pytest.raises(ConfigError, match="token"):
        GroupMember(server=("127.0.0.1", 1), me=world[0], world=world, token=b"", attempt=0)
    with GroupServer(bind=("127.0.0.1", 0), world=world, token=None, insecure=True, attempt=0) as srv:
        m = GroupMember(server=srv.address, me=world[0], world=world, token=None, insecure=True, attempt=0)
        m.join(WAIT)
        assert m.finish(WAIT) is True
        m.close()


def test_a_busy_port_is_a_configuration_error(token):
    world = make_world(1)
    with (
        socket.create_server(("127.0.0.1", 0)) as busy,
        pytest.raises(ConfigError, match="cannot listen on 127.0.0.1"),
    ):
        GroupServer(bind=busy.getsockname(), world=world, token=token, attempt=0).start()


def test_a_member_with_the_wrong_token_cannot_join(group):
    srv, members, world = group
    intruder = GroupMember(server=srv.address, me=world[0], world=world, token=b"not-the-token-0123", attempt=1,
                           connect_timeout=1)
    with pytest.raises(PeersTimeout, match="could not prove it holds the group token"):
        intruder.join(1.0)
    # The other way round: a client that cannot prove the token is cut off by the server.
    before = srv.rejected
    with raw_connect(srv.address) as s:
        hello = wire.encode({"t": "hello", "v": 1, "attempt": 1, "epoch": 0, "rank": 0, "pod": "pod-0",
                             "nonce": wire.nonce()})
        s.sendall(wire.frame(hello) + wire.frame(wire.encode({"t": "proof", "proof": "00" * 32})))
        assert closed_by_peer(s)
    wait_until(lambda: srv.rejected > before, "the rejection")
    still_works(srv, members)


@pytest.mark.parametrize("attack", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    wire.HEADER.pack(wire.MAX_HANDSHAKE_FRAME + 1) + b"x" * 100,  # oversize before auth
    wire.HEADER.pack(0xFFFFFFFF),
    wire.frame(b"\x80\x04\x95pickle"),
    wire.frame(b'{"t": "fail", "attempt": 1, "epoch": 0, "code": 1, "cause": "unauthenticated"}'),
    wire.frame(b'{"t":"hello","v":1,"attempt":1,"epoch":0,"rank":0,"pod":"pod-0","nonce":"short"}'),
])
def test_garbage_and_oversize_frames_are_cut_off_without_harm(group, attack):
    srv, members, _ = group
    before = srv.rejected
    with raw_connect(srv.address) as s:
        s.sendall(attack)
        assert closed_by_peer(s)
    wait_until(lambda: srv.rejected > before, "the rejection")
    still_works(srv, members)


def test_a_silent_half_open_connection_is_dropped_at_the_handshake_deadline(token):
    world = make_world(1)
    with GroupServer(bind=("127.0.0.1", 0), world=world, token=token, attempt=0, handshake_timeout=0.3) as srv:
        with raw_connect(srv.address) as s:
            s.sendall(wire.HEADER.pack(100))  # announces a body that never comes
            assert closed_by_peer(s)
        assert srv.rejected == 1


def test_a_replayed_conversation_is_refused(token):
    world = make_world(2)
    with GroupServer(bind=("127.0.0.1", 0), world=world[:1] + world[1:], token=token, attempt=0, **FAST) as srv:
        proxy = RecordingProxy(srv.address)
        m0 = GroupMember(server=srv.address, me=world[0], world=world, token=token, attempt=0, **FAST)
        m1 = GroupMember(server=proxy.address, me=world[1], world=world, token=token, attempt=0, **FAST)
        join_all([m0, m1])
        m1.report_failure(4, "recorded")  # a sealed frame to replay later
        assert m0.aborted.wait(WAIT)
        recorded = bytes(proxy.sent)
        m1.close()
        before = srv.rejected
        # Replayed byte for byte: the server's fresh challenge makes the recorded proof worthless.
        with raw_connect(srv.address) as s:
            s.sendall(recorded)
            assert closed_by_peer(s)
        wait_until(lambda: srv.rejected > before, "the rejection")
        assert srv.state.first.cause == "recorded"
        m0.close()


def test_stale_attempts_are_refused_and_a_newer_member_waits_for_its_coordinator(token):
    world = make_world(2)
    with GroupServer(bind=("127.0.0.1", 0), world=world, token=token, attempt=5, **FAST) as srv:
        straggler = GroupMember(server=srv.address, me=world[1], world=world, token=token, attempt=4, **FAST)
        with pytest.raises(GroupAborted, match="restart-attempt 4 is over"):
            straggler.join(WAIT)
        newer = GroupMember(server=srv.address, me=world[1], world=world, token=token, attempt=6, **FAST)
        with pytest.raises(PeersTimeout, match="older than the member's 6"):
            newer.join(0.5)
        assert srv.state.joined == set()


def test_messages_from_an_old_epoch_are_dropped_after_a_restart(group):
    srv, members, _ = group
    members[0].report_failure(1, "epoch 0 failure")
    for m in members:
        assert m.aborted.wait(WAIT)
    epochs = []
    join_threads = [threading.Thread(target=lambda m=m: epochs.append(m.restart_barrier(WAIT)))
                    for m in members]
    for t in join_threads:
        t.start()
    for t in join_threads:
        t.join()
    assert epochs == [1, 1, 1] and srv.epoch == 1 and all(m.phase is MemberPhase.RUNNING for m in members)
    # A straggling report from epoch 0, correctly sealed on a live session: dropped.
    members[2]._send({"t": "fail", "attempt": 1, "epoch": 0, "code": 1, "cause": "straggler"})
    members[2]._send({"t": "fail", "attempt": 0, "epoch": 1, "code": 1, "cause": "other attempt"})
    # An epoch-1 message sent after them on the same connection is processed after them.
    members[2]._send({"t": "done", "attempt": 1, "epoch": 1})
    wait_until(lambda: 2 in srv.state.done, "the done message")
    assert srv.phase is Phase.RUNNING and srv.state.first is None
    still_works(srv, members)


def test_gang_start_timeout_names_the_missing_member(token):
    world = make_world(3)
    with GroupServer(bind=("127.0.0.1", 0), world=world, token=token, attempt=0, **FAST) as srv:
        members = [GroupMember(server=srv.address, me=m, world=world, token=token, attempt=0, **FAST)
                   for m in world[:2]]
        with pytest.raises(PeersTimeout, match=r"1 of 3 group members had not joined .*rank 2 \(pod-2\)"):
            join_all(members, timeout=1.0)
        for m in members:
            m.close()


def test_gang_start_timeout_counts_the_missing_beyond_the_first_few(token):
    world = make_world(8)
    with GroupServer(bind=("127.0.0.1", 0), world=world, token=token, attempt=0, **FAST) as srv:
        m = GroupMember(server=srv.address, me=world[0], world=world, token=token, attempt=0, **FAST)
        with pytest.raises(PeersTimeout, match=r"7 of 8 .*: rank 1 \(pod-1\), .*rank 5 \(pod-5\) \(\+2 more\)"):
            m.join(1.0)


def test_gang_start_timeout_names_who_is_missing_now_not_who_was_missing_first(token):
    """The heartbeats' list of missing members changes as members join: the member keeps the latest."""
    world = make_world(3)
    with GroupServer(bind=("127.0.0.1", 0), world=world, token=token, attempt=0, **FAST) as srv:
        first = GroupMember(server=srv.address, me=world[0], world=world, token=token, attempt=0, **FAST)
        errors = []

        def join_first():
            try:
                first.join(2.0)
            except PeersTimeout as e:
                errors.append(str(e))

        joining = threading.Thread(target=join_first)
        joining.start()
        wait_until(lambda: first._n_missing == 2, "a heartbeat naming both others missing")
        assert [m.rank for m in first._missing] == [1, 2]
        # The second stays connected until after the first's deadline.
        second = GroupMember(server=srv.address, me=world[1], world=world, token=token, attempt=0, **FAST)
        try:
            second.start_join(WAIT)
            joining.join(WAIT)
        finally:
            second.close()
            first.close()
    assert len(errors) == 1 and "1 of 3 group members had not joined" in errors[0], errors
    assert "rank 2 (pod-2)" in errors[0] and "rank 1 (pod-1)" not in errors[0], errors[0]


def test_gang_start_timeout_after_losing_the_coordinator_still_names_the_missing(token):
    """The coordinator gives up (or dies) a moment before a member's own deadline: the member,
    unable to rejoin, still says who was missing when it was last connected."""
    world = make_world(3)
    with GroupServer(bind=("127.0.0.1", 0), world=world, token=token, attempt=0, **FAST) as srv:
        m = GroupMember(server=srv.address, me=world[1], world=world, token=token, attempt=0, **FAST)
        closer = threading.Timer(0.6, srv.stop)
        closer.start()
        try:
            with pytest.raises(PeersTimeout) as e:
                m.join(1.5)
        finally:
            closer.cancel()
            m.close()
    assert "could not join the group coordinator" in str(e.value)
    assert "when last connected, 2 of 3 members had not joined: rank 0 (pod-0), rank 2 (pod-2)" in str(e.value)


def test_gang_start_timeout_when_the_coordinator_never_answers(token):
    world = make_world(2)
    with socket.create_server(("127.0.0.1", 0)) as closed_port:
        address = closed_port.getsockname()
    m = GroupMember(server=address, me=world[1], world=world, token=token, attempt=0)
    with pytest.raises(PeersTimeout, match=f"could not join the group coordinator at 127.0.0.1:{address[1]}"):
        m.join(0.5)


# --- abuse: floods, lockouts, stolen identities, hostile causes (issue: hold under attack) ---

def test_slow_reconnecting_clients_cannot_lock_out_the_gang_start(token, caplog):
    """64 clients trickling a byte at a time and reconnecting the moment they are dropped (each
    read short of the handshake deadline) hold no slot for long and get few: the members join."""
    world = make_world(3)
    started = time.monotonic()
    with (
        GroupServer(bind=("127.0.0.1", 0), world=world, token=token, attempt=0, handshake_timeout=1.0,
                    **LIVE) as srv,
        caplog.at_level("WARNING", logger="jobset_runtime.group"),
        SlowClients(srv.address, n=64, source="127.0.0.2", every=0.3, limit=60) as flood,
    ):
        wait_until(lambda: srv.rejected >= 64, "the flood to be turned away")
        members = [GroupMember(server=srv.address, me=m, world=world, token=token, attempt=0, **LIVE)
                   for m in world]
        join_all(members)
        assert srv.phase is Phase.RUNNING and flood.connections > 64
        assert srv.gate.under_way <= srv.gate.limits.per_source + len(world)
        for m in members:
            m.close()
    # Thousands of refusals, a handful of lines: one aggregated warning per window (and one as
    # the server stops), however long this took on a loaded machine.
    windows = (time.monotonic() - started) / WARN_EVERY
    refusals = [r.getMessage() for r in caplog.records if "unauthenticated connection" in r.getMessage()]
    assert 1 <= len(refusals) <= windows + 2 and srv.rejected > 10 * len(refusals), (srv.rejected, refusals)


def test_a_joined_rank_cannot_be_taken_over(token):
    world = make_world(2)
    with GroupServer(bind=("127.0.0.1", 0), world=world, token=token, attempt=0, **FAST) as srv:
        real = GroupMember(server=srv.address, me=world[1], world=world, token=token, attempt=0, **FAST)
        joining = threading.Thread(target=lambda: real.join(WAIT))
        joining.start()
        wait_until(lambda: 1 in srv.state.joined, "rank 1 to join")
        held = srv._conns[1]
        # Another token holder claiming rank 1: refused for as long as the real one is connected.
        thief = GroupMember(server=srv.address, me=world[1], world=world, token=token, attempt=0, **FAST)
        with pytest.raises(PeersTimeout, match="rank 1 is already connected from 127.0.0.1"):
            thief.join(1.5)
        assert srv._conns[1] is held and real.phase is MemberPhase.WAITING
        first = GroupMember(server=srv.address, me=world[0], world=world, token=token, attempt=0, **FAST)
        first.join(WAIT)
        joining.join()
        assert real.phase is MemberPhase.RUNNING and srv.phase is Phase.RUNNING
        for m in (first, real):
            m.close()


def test_a_rank_is_bound_to_the_address_of_its_pods_dns_name(token, pod_dns):
    world = make_world(3)
    pod_dns.set(fqdn("pod-0"), "127.0.0.1")
    pod_dns.set(fqdn("pod-1"), "127.0.0.3")
    known = KnownPods({m.pod: fqdn(m.pod) for m in world}, nameservers=[pod_dns.nameserver], retry_s=0.2)
    with GroupServer(bind=("127.0.0.1", 0), world=world, token=token, attempt=0, known=known, **FAST) as srv:
        wait_until(lambda: known.address_of("pod-1") == "127.0.0.3", "the names to resolve")
        # A token holder on pod-0's address claiming pod-1's rank before pod-1 came: refused.
        thief = GroupMember(server=srv.address, me=world[1], world=world, token=token, attempt=0, **FAST)
        with pytest.raises(PeersTimeout, match="pod pod-1 has address 127.0.0.3, not 127.0.0.1"):
            thief.join(1.5)
        # pod-2 has no record yet: refused for now, and admitted once its name resolves.
        members = [GroupMember(server=srv.address, me=m, world=world, token=token, attempt=0,
                               source=f"127.0.0.{3 if m.rank == 1 else 4 if m.rank == 2 else 1}", **FAST)
                   for m in world]
        threading.Timer(1.0, pod_dns.set, (fqdn("pod-2"), "127.0.0.4")).start()
        join_all(members)
        assert srv.phase is Phase.RUNNING
        assert {c.peer[0] for c in srv._conns.values()} == {"127.0.0.1", "127.0.0.3", "127.0.0.4"}
        for m in members:
            m.close()


def leaders_group(token, origin):
    """The leaders' group of two slices (ranks 0-1 and 2-3); the last leader relays a failure of `origin`."""
    pods = make_world(4)
    leaders = [pods[0], pods[2]]
    with GroupServer(bind=("127.0.0.1", 0), world=leaders, token=token, attempt=0,
                     slices=[pods[:2], pods[2:]], **FAST) as top:
        members = [GroupMember(server=top.address, me=m, world=leaders, token=token, attempt=0, **FAST)
                   for m in leaders]
        join_all(members)
        members[1].report_failure(3, "relayed", origin=origin)
        assert members[0].aborted.wait(WAIT)
        cause = members[0].abort_cause
        for m in members:
            m.close()
        return cause


@pytest.mark.parametrize("origin", [MemberId(1, "pod-1"),  # another slice's pod
                                    MemberId(3, "pod-1"),  # its own slice's rank, another pod's name
                                    MemberId(9, "pod-9")])  # past the last slice
def test_a_leader_cannot_relay_a_failure_of_a_pod_outside_its_slice(token, origin):
    cause = leaders_group(token, origin)
    # The forged report cost the forger its connection; the abort names the leader, not `origin`.
    assert (cause.rank, cause.pod) == (2, "pod-2") and cause.code is None, cause


def test_a_leader_relays_a_failure_of_its_own_slice(token):
    cause = leaders_group(token, MemberId(3, "pod-3"))
    assert (cause.rank, cause.pod, cause.code, cause.cause) == (3, "pod-3", 3, "relayed")


def test_a_cause_of_any_bytes_reaches_every_member_as_one_line_of_utf8(group, tmp_path):
    srv, members, _ = group
    # A cause with line breaks (forged log lines), a NUL, and a path of bytes that are not all
    # UTF-8 (as Python decodes them from argv: surrogates); longer than the wire keeps.
    hostile = "boom\n[pod-0] jobset-run[pod-0 rank 0] forged line\r\x00\u2028/opt/caf\udcc3\udca9/\udcff" + "x" * 2000
    members[1].report_failure(3, hostile)
    for m in members:
        assert m.aborted.wait(WAIT)
        cause = m.abort_cause.cause
        assert "\n" not in cause and "\r" not in cause and "\x00" not in cause and "\u2028" not in cause
        assert cause.encode("utf-8").decode("utf-8") == cause and len(cause) <= wire.MAX_CAUSE
        assert cause.startswith("boom\\n[pod-0] jobset-run") and "/opt/café/\\xffxx" in cause, cause
        path = tmp_path / f"termination-{m.me.rank}"
        assert write_termination_message(f"stopped because a peer failed: {m.abort_cause.describe()}", str(path))
        written = read_termination_message(str(path))
        assert "\n" not in written and "forged line" in written


def test_out_of_descriptors_the_coordinator_pauses_accepting_and_recovers(token, token_file):
    """A coordinator limited to 48 descriptors, 120 connections from as many addresses: accept()
    fails with EMFILE.  It pauses (no line per try), and the missing member still joins."""
    import subprocess

    coord = Proc("--serve", "--rank", 0, "--world", 2, "--token-file", token_file, "--join-timeout", 60,
                 preexec_fn=low_nofile, stderr=subprocess.PIPE)
    try:
        port = coord.expect("listening")["port"]
        flood_descriptors(port)
        world = make_world(2)
        m = GroupMember(server=("127.0.0.1", port), me=world[1], world=world, token=token, attempt=0, **FAST)
        try:
            m.join(WAIT)
        except PeersTimeout:
            coord.stop()
            raise AssertionError(coord.p.stderr.read()[-3000:]) from None
        coord.expect("joined")
        m.close()
        coord.send("close")
        err = coord.p.stderr.read()
        coord.p.wait(WAIT)
    finally:
        coord.stop()
    assert "accept() failed: Too many open files" in err, err[-3000:]
    assert len(err.splitlines()) < 20, err[-3000:]


def test_slow_reconnecting_clients_cannot_lock_out_the_tree_gang_start(token):
    """The same flood at each slice leader and at the leaders' server: every slice still starts."""
    from jobset_runtime.group.relay import SliceLeader

    world = make_world(6)
    slices = [world[:3], world[3:]]
    leaders = [s[0] for s in slices]
    with GroupServer(bind=("127.0.0.1", 0), world=leaders, token=token, attempt=0, slices=slices,
                     handshake_timeout=1.0, **LIVE) as top:
        sls = [SliceLeader(bind=("127.0.0.1", 0), slice_world=s, upstream=top.address, me=s[0], leaders=leaders,
                           token=token, attempt=0, join_timeout=WAIT, barrier_timeout=WAIT, **LIVE) for s in slices]
        for sl in sls:
            sl.start()
        floods = [SlowClients(address, n=32, source="127.0.0.2", every=0.3, limit=60)
                  for address in [top.address, *(sl.address for sl in sls)]]
        try:
            for flood in floods:
                flood.__enter__()
            wait_until(lambda: all(s.rejected >= 24 for s in [top, *(sl.server for sl in sls)]),
                       "the flood to be turned away everywhere")
            members = [GroupMember(server=sls[m.rank // 3].address, me=m, world=slices[m.rank // 3], token=token,
                                   attempt=0, **LIVE) for m in world]
            join_all(members)
            assert top.phase is Phase.RUNNING and all(m.phase is MemberPhase.RUNNING for m in members)
            for m in members:
                m.close()
        finally:
            for flood in floods:
                flood.__exit__(None, None, None)
            for sl in sls:
                sl.stop()
