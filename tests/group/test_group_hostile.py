"""What the group refuses: wrong tokens, garbage, oversize frames, replays, stale attempts
and epochs; each one without harm to the group that is running."""

import socket
import threading
import time

import pytest
from grouphelpers import (
    WAIT,
    RecordingProxy,
    closed_by_peer,
    join_all,
    make_world,
    raw_connect,
)

from jobset_runtime.errors import ConfigError, PeersTimeout
from jobset_runtime.group import (
    GroupAborted,
    GroupMember,
    GroupServer,
    MemberPhase,
    Phase,
    wire,
)

FAST = {"heartbeat": 0.1, "deadline": 2.0}


def wait_until(cond, what):
    end = time.monotonic() + WAIT
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


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
