"""The server's connections (server.py): accepted in batches from the loop, each one an asyncio
protocol whose deadlines are timers -- no task per connection -- and nothing left behind."""

import asyncio
import concurrent.futures
import socket
import threading

import pytest
from grouphelpers import (
    WAIT,
    SlowDns,
    closed_by_peer,
    fqdn,
    join_all,
    make_world,
    raw_connect,
    wait_until,
)

from jobset_runtime.admission import KnownPods
from jobset_runtime.group import GroupMember, GroupServer, Phase, server, wire

FAST = {"heartbeat": 0.1, "deadline": 5.0}


@pytest.fixture
def loop():
    """An event loop in a thread of its own, shared as a process hosting many servers shares one."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(WAIT)
    loop.close()


def on_loop(loop, fn):
    """fn() run on the loop's thread, between two of its callbacks; its result."""
    done = concurrent.futures.Future()

    def run():
        try:
            done.set_result(fn())
        except Exception as e:  # noqa: BLE001 -- handed to the test thread
            done.set_exception(e)

    loop.call_soon_threadsafe(run)
    return done.result(WAIT)


@pytest.mark.parametrize("backlog", [16, 60])
def test_a_backlog_of_connections_is_accepted_in_one_turn_of_the_loop(token, loop, backlog):
    """The connections waiting in the listener's backlog are accepted in one turn of the loop, up
    to the point where the admission gate starts dropping unknown addresses at random (48 for a
    small group); past it, one per turn, so the handshakes under way can finish in between."""
    world = make_world(2)
    with GroupServer(bind=("127.0.0.1", 0), world=world, token=token, attempt=0, loop=loop, **FAST) as srv:
        crowded_at = int(srv.gate.limits.early_drop * (srv.gate.limits.total - srv.gate.limits.reserved))
        assert crowded_at == 48
        holding, connected, seen = threading.Event(), threading.Event(), concurrent.futures.Future()

        def hold_the_loop():
            # The clients connect meanwhile: into the backlog, as nothing runs the loop.
            holding.set()
            connected.wait(WAIT)
            # The next turn runs this first, then accepts; what this schedules runs in the turn after.
            loop.call_soon(lambda: loop.call_soon(lambda: seen.set_result(srv.gate.under_way)))

        loop.call_soon_threadsafe(hold_the_loop)
        assert holding.wait(WAIT)
        clients = []
        try:
            for i in range(backlog):  # each from an address of its own: no per-source cap applies
                clients.append(socket.create_connection(srv.address, timeout=WAIT,
                                                        source_address=(f"127.0.2.{i + 1}", 0)))
            connected.set()
            # Every handshake under way was accepted in that one turn (one per turn would show 1).
            assert seen.result(WAIT) == min(backlog, crowded_at)
            # The rest follow, one per turn: each admitted, or dropped by the gate.
            wait_until(lambda: srv.gate.under_way + srv.rejected == backlog, "the rest of the backlog")
        finally:
            for c in clients:
                c.close()
        # Their handshakes end as the clients hang up, and give every slot back.
        wait_until(lambda: srv.rejected == backlog and srv.gate.under_way == 0, "the handshakes to end")


def test_a_handshake_holds_no_task_and_its_deadline_is_a_timer(token, loop, caplog):
    world = make_world(1)
    with (
        caplog.at_level("WARNING", logger="jobset_runtime.group"),
        GroupServer(bind=("127.0.0.1", 0), world=world, token=token, attempt=0, loop=loop,
                    handshake_timeout=0.5, **FAST) as srv,
    ):
        silent = [raw_connect(srv.address) for _ in range(4)]
        halfway = raw_connect(srv.address)  # a header, and never its body
        halfway.sendall(wire.HEADER.pack(100))
        wait_until(lambda: srv.gate.under_way == 5, "the five handshakes to be under way")
        # Five connections in their handshake: the loop runs the server's own task, nothing more.
        assert on_loop(loop, lambda: len(asyncio.all_tasks(loop))) == 1
        for c in [*silent, halfway]:
            assert closed_by_peer(c)
            c.close()
        wait_until(lambda: srv.rejected == 5 and srv.gate.under_way == 0, "the five rejections")
    summary = [r.getMessage() for r in caplog.records if "unauthenticated connection" in r.getMessage()]
    assert any("handshake timed out: 5" in line for line in summary), summary


def test_a_claim_whose_lookup_answers_after_the_wait_is_refused_for_now_then_admitted(
        token, pod_dns, monkeypatch, caplog):
    """The pod's name is answered 0.8 s after the claim, past the claim's wait (0.3 s here): the
    claim is refused for now, the late answer finds that connection gone and does nothing, and the
    member's next claim gets in."""
    monkeypatch.setattr(server, "LOOKUP_WAIT", 0.3)
    world = make_world(2)
    source = {0: "127.0.0.1", 1: "127.0.0.3"}
    for m in world:
        pod_dns.set(fqdn(m.pod), source[m.rank])
    slow = SlowDns(pod_dns.address, delay=0.8)
    known = KnownPods({m.pod: fqdn(m.pod) for m in world}, nameservers=[slow.nameserver], on_claim=True)
    try:
        with (
            caplog.at_level("WARNING"),  # asyncio's log too: an exception in a callback is logged there
            GroupServer(bind=("127.0.0.1", 0), world=world, token=token, attempt=0, known=known, **FAST) as srv,
        ):
            members = [GroupMember(server=srv.address, me=m, world=world, token=token, attempt=0,
                                   source=source[m.rank], **FAST) for m in world]
            join_all(members)
            assert srv.phase is Phase.RUNNING
            assert {c.peer[0] for c in srv._conns.values()} == set(source.values())
            assert all(m.names_resolved for m in members)
            assert srv.claims.total >= 2  # each pod's first claim, at least
            assert all(m._backoff.tries >= 1 for m in members)
            for m in members:
                m.close()
    finally:
        slow.close()
    lines = [r.getMessage() for r in caplog.records]
    assert any("refused" in line and "join" in line and "has no DNS record yet" in line for line in lines), lines
    # The late answers reached connections already refused: nothing failed on them.
    assert not [r for r in caplog.records if r.exc_info], lines


def test_stop_closes_every_connection_in_every_stage_and_leaves_nothing_on_a_shared_loop(
        token, loop, pod_dns, monkeypatch):
    """One member welcomed, one claim waiting for its pod's name, one connection in its handshake:
    stop() closes all three, gives the handshake's slot back, and leaves no task on the loop."""
    monkeypatch.setattr(server, "LOOKUP_WAIT", WAIT)
    world = make_world(3)
    pod_dns.set(fqdn("pod-0"), "127.0.0.1")
    pod_dns.set(fqdn("pod-2"), "127.0.0.4")
    slow = SlowDns(pod_dns.address, delay=0.1)
    known = KnownPods({m.pod: fqdn(m.pod) for m in world}, nameservers=[slow.nameserver], on_claim=True)
    srv = GroupServer(bind=("127.0.0.1", 0), world=world, token=token, attempt=0, known=known, loop=loop, **FAST)
    srv.start()
    members = [GroupMember(server=srv.address, me=world[r], world=world, token=token, attempt=0,
                           source=ip, **FAST) for r, ip in ((0, "127.0.0.1"), (2, "127.0.0.4"))]
    try:
        members[0].start_join(WAIT)
        wait_until(lambda: 0 in srv.state.joined, "pod-0 to join")
        slow.delay = WAIT  # pod-2's name is not answered while the test runs
        members[1].start_join(WAIT)
        wait_until(lambda: slow.queries >= 2, "pod-2's claim to wait for its name")
        handshake = raw_connect(srv.address)
        wait_until(lambda: srv.gate.under_way == 1, "the handshake")
        srv.stop()
        assert closed_by_peer(handshake)
        handshake.close()
        assert not srv._open and srv.gate.under_way == 0  # every transport closed (connection_lost ran)
        assert on_loop(loop, lambda: asyncio.all_tasks(loop)) == set()
        # The listener is closed too: a new connection is refused by the kernel.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(srv.address, timeout=WAIT).close()
    finally:
        for m in members:
            m.close()
        srv.stop()
        slow.close()


def read_frame(sock) -> bytes:
    header = b""
    while len(header) < wire.HEADER.size:
        header += sock.recv(wire.HEADER.size - len(header)) or _closed()
    body = b""
    n = wire.body_length(header, wire.MAX_FRAME)
    while len(body) < n:
        body += sock.recv(n - len(body)) or _closed()
    return body


def _closed():
    raise AssertionError("the server closed the connection")


def raw_member(address, token, me):
    """A member's handshake by hand (wire.py): the connection and its session once welcomed."""
    sock = raw_connect(address)
    hello_b = wire.encode({"t": "hello", "v": wire.VERSION, "attempt": 0, "epoch": 0, "rank": me.rank,
                           "pod": me.pod, "nonce": wire.nonce()})
    sock.sendall(wire.frame(hello_b))
    challenge_b = read_frame(sock)
    proof = wire.expect(read_frame(sock), "proof")
    assert wire.proof_ok(proof["proof"], wire.server_proof(token, hello_b, challenge_b))
    sock.sendall(wire.frame(wire.encode({"t": "proof", "proof": wire.member_proof(token, hello_b, challenge_b)})))
    session = wire.member_session(wire.session_key(token, hello_b, challenge_b))
    assert session.open(read_frame(sock))["t"] == "welcome"
    return sock, session


def _ticked(srv, loop, token, me, ticks: int) -> list[dict]:
    """A member joined by hand, then `ticks` ticks of the server run by hand: what they sent it."""
    sock, session = raw_member(srv.address, token, me)
    try:
        for _ in range(ticks):
            on_loop(loop, srv._tick)
        # What the ticks sent is in this socket already (loopback delivers within send()).
        sock.settimeout(0.5)
        frames = wire.FrameBuffer(wire.MAX_FRAME)
        bodies = []
        try:
            while data := sock.recv(65536):
                bodies += frames.feed(data)
        except TimeoutError:
            pass
        return [session.open(body) for body in bodies]
    finally:
        sock.close()


def test_a_member_that_heard_from_the_server_since_the_last_tick_gets_no_heartbeat_at_this_one(token, loop):
    """The welcome was the server's word: the tick after it sends no heartbeat to that member, the
    next one does (the ticks are run by hand here; the server's own come once an hour)."""
    world = make_world(2)
    with GroupServer(bind=("127.0.0.1", 0), world=world, token=token, attempt=0, loop=loop,
                     heartbeat=3600, deadline=3 * 3600) as srv:
        # The first tick: welcomed since the last one, nothing sent; the second: the heartbeat.
        msgs = _ticked(srv, loop, token, world[0], ticks=2)
        assert [m["t"] for m in msgs] == ["hb"], msgs
        assert msgs[0]["missing"] == [[1, "pod-1"]] and msgs[0]["n_missing"] == 1


def test_a_deadline_under_three_heartbeats_gets_every_heartbeat(token, loop):
    """Skipping a tick leaves a member two heartbeats without a word: with a deadline shorter than
    three, every tick sends its heartbeat, the welcome's notwithstanding."""
    world = make_world(2)
    with GroupServer(bind=("127.0.0.1", 0), world=world, token=token, attempt=0, loop=loop,
                     heartbeat=3600, deadline=2 * 3600) as srv:
        msgs = _ticked(srv, loop, token, world[0], ticks=2)
        assert [m["t"] for m in msgs] == ["hb", "hb"], msgs
