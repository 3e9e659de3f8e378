"""The coordinator's side of the group channel: an asyncio TCP server in its own thread.

It authenticates each connection (wire.py), feeds the events to GroupState (state.py)
and writes out what the state decides.  A connection that breaks the protocol is closed
and logged; before authentication that touches nothing else.  Liveness: every frame
from a member counts; one silent past `deadline` is closed and counts as vanished.

A connection costs no task: the listener stays registered with the loop and accepts what
is waiting in batches, and each connection is an asyncio protocol (_Conn) fed by its
transport's reads, with one timer for the stage that has a deadline.  One connection goes
through stages:

    HELLO --hello, challenge and proof sent--> PROOF --member's proof checked--> SERVING
                                                  |                               ^
                                                  +--its pod's name asked for--> LOOKUP
    any --closed, broke the protocol, timed out, refused--> CLOSED
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import logging
import socket
import threading

from .. import admission, contract
from ..addresses import join_host_port
from ..admission import KnownPods
from ..log import one_line
from . import wire
from .listener import open_listener
from .state import ALL, UP, Failure, GroupState, MemberId, Phase
from .wire import check_auth

log = logging.getLogger("jobset_runtime.group")

_WRITE_BUFFER_MAX = 1 << 20  # a member that stops reading is treated as vanished
# Longest a claim waits for its pod's name to be looked up: longer than a lookup's first try
# (peers.LONE_RTO, 2 s), so a query lost once is answered by its retransmission within the wait;
# well inside the member's wait for its welcome (member.py, at least 5 s), so a slow answer means
# one retry, never a welcome the member gave up on.
LOOKUP_WAIT = 3.0
# Connections accepted per readiness of the listener (asyncio's own servers take their backlog,
# 100): a gang start's backlog in a few turns, and the loop's other callbacks run in between.
_ACCEPT_BATCH = 128


class _Stage(enum.Enum):
    """Where one connection is (see the module's docstring)."""

    HELLO = "hello"
    PROOF = "proof"
    LOOKUP = "lookup"
    SERVING = "serving"
    CLOSED = "closed"


_HANDSHAKE = (_Stage.HELLO, _Stage.PROOF)


class _Conn(asyncio.Protocol):
    """One admitted connection, from accept to close, driven by its transport's callbacks.

    The handshake's frames go one by one (the frame limit grows after the proof); a member's
    sealed frames are cut from each read at once.  While the claim waits for its pod's name
    (LOOKUP) nothing is read, as nothing was before the claim was decided."""

    __slots__ = ("addr", "frames", "gated", "hello", "keys", "last", "loop", "peer", "rank",
                 "server", "session", "spoke", "stage", "timer", "transport", "why")

    def __init__(self, server: GroupServer, addr: str, peer):
        self.server, self.loop, self.addr, self.peer = server, server._loop, addr, peer
        self.stage = _Stage.HELLO
        self.transport: asyncio.Transport | None = None
        self.frames = wire.FrameBuffer(wire.MAX_HANDSHAKE_FRAME)
        self.gated = True  # holds a handshake slot of the server's admission.Gate
        # The handshake's one total deadline (admission.py), from accept to the member's proof.
        self.timer: asyncio.TimerHandle | None = self.loop.call_later(server.handshake_timeout, self._timed_out)
        self.hello: dict | None = None
        self.keys: wire.HandshakeKeys | None = None  # from the hello until the proof is checked
        self.session: wire.Session | None = None
        self.rank: int | None = None
        self.last = 0.0  # loop time of the last read, once serving
        self.spoke = False  # sent a frame other than a heartbeat since the server's last tick
        self.why: str | None = None  # why this side aborted the transport, for connection_lost

    # --- sending ----------------------------------------------------------------------
    def send(self, msg: dict) -> None:
        self.send_encoded(wire.encode(msg))

    def send_encoded(self, data: bytes) -> None:
        """A message already encoded (a broadcast encodes once), sealed for this connection."""
        transport = self.transport
        if transport.is_closing():
            return
        transport.write(self.session.seal_encoded(data))
        self.spoke = True

    # --- the transport's callbacks ----------------------------------------------------
    def connection_made(self, transport) -> None:
        transport.set_write_buffer_limits(high=_WRITE_BUFFER_MAX)

    def pause_writing(self) -> None:
        """More than _WRITE_BUFFER_MAX unsent: the member stopped reading.  Aborted, and dropped by
        connection_lost, which comes in a callback of its own: never within the write (a broadcast
        to every connection may be under way)."""
        if self.stage is _Stage.SERVING:
            log.warning("group: rank %d does not read its messages; closing it", self.rank)
        self.why = "does not read its messages"
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        stage = self.stage
        if stage is _Stage.SERVING:
            self.last = self.loop.time()
            self._serve(data)
            return
        if stage is _Stage.CLOSED:
            return
        self.frames.add(data)
        try:
            while self.stage in _HANDSHAKE and (body := self.frames.pop()) is not None:
                self._handshake(body)
        except wire.ProtocolError as e:
            self.server._rejected(self, "handshake failed", _why(e))
            self.close()
            return
        if self.stage is _Stage.SERVING:  # frames that came with the proof, after the welcome
            self._serve(b"")

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost says what it meant

    def connection_lost(self, exc: Exception | None) -> None:
        server, stage = self.server, self.stage
        server._open.discard(self)
        if stage is _Stage.CLOSED:  # closed by this side, already accounted for
            return
        self._end()
        why = self.why or _why(exc)
        if stage in _HANDSHAKE:
            server._rejected(self, "handshake failed", why)
        elif stage is _Stage.SERVING:
            server._lost(self, why)
        # LOOKUP: nothing is read meanwhile, so only a failed write gets here; the answer finds it CLOSED.

    # --- stages -----------------------------------------------------------------------
    def _handshake(self, body: bytes) -> None:
        server = self.server
        if self.stage is _Stage.HELLO:
            hello = wire.expect(body, "hello")
            wire.check_nonce(hello["nonce"])
            if hello["v"] != wire.VERSION:
                raise wire.ProtocolError(f"protocol version {hello['v']} (this side speaks {wire.VERSION})")
            state = server.state
            challenge_b = wire.encode({"t": "challenge", "v": wire.VERSION, "attempt": state.attempt,
                                       "epoch": state.epoch, "nonce": wire.nonce()})
            # Both proofs and the session key at once: the transcript is hashed once, not thrice.
            keys = wire.handshake_keys(server._key, body, challenge_b)
            self.transport.write(wire.frame(challenge_b)
                                 + wire.frame(wire.encode({"t": "proof", "proof": keys.server_proof})))
            self.hello, self.keys, self.stage = hello, keys, _Stage.PROOF
            return
        answer = wire.expect(body, "proof")
        if not wire.proof_ok(answer["proof"], self.keys.member_proof):
            raise wire.ProtocolError(f"wrong token (claimed rank {self.hello['rank']}, "
                                     f"pod {self.hello['pod'][:64]!r})")
        self.session = wire.server_session(self.keys.session_key)
        self.keys = None
        # The handshake is over: its deadline and its slot go, and the address is known from now on.
        self.timer.cancel()
        self.timer, self.gated = None, False
        server.gate.release(self.addr)
        server.gate.learn(self.addr)
        self.frames.limit = wire.MAX_FRAME
        server._claim(self)

    def await_lookup(self, known: KnownPods) -> None:
        """The claim waits for its pod's name to be answered, up to LOOKUP_WAIT (a timer, and the
        answer comes from the resolving thread): whichever comes first decides."""
        self.stage = _Stage.LOOKUP
        self.transport.pause_reading()
        loop, looked_up = self.loop, self._looked_up

        def answered():
            try:
                loop.call_soon_threadsafe(looked_up)
            except RuntimeError:
                pass  # the server stopped meanwhile

        self.timer = loop.call_later(LOOKUP_WAIT, looked_up)
        known.claim(self.hello["pod"], answered)

    def _looked_up(self) -> None:
        if self.stage is not _Stage.LOOKUP:
            return  # decided already (by the timer or the answer), or closed
        self.timer.cancel()
        self.timer = None
        server = self.server
        # Checked again after the lookup: the group may have moved on while it was answered.
        server._decide(self, server._bound(self.hello, self.addr) or server.state.admit(self.hello))
        if self.stage is _Stage.SERVING:
            self.transport.resume_reading()
            self._serve(b"")

    def _serve(self, data: bytes) -> None:
        handle, session = self.server._handle, self.session
        try:
            for body in self.frames.feed(data):
                handle(self, session.open(body))
        except wire.ProtocolError as e:
            self.close()
            self.server._lost(self, _why(e))

    def _timed_out(self) -> None:
        self.timer = None
        if self.stage in _HANDSHAKE:
            self.server._rejected(self, "handshake timed out", "handshake timed out")
            self.close()

    # --- ending -----------------------------------------------------------------------
    def close(self) -> None:
        """From this side: the transport sends what it holds, then closes."""
        self._end()
        self.transport.close()

    def _end(self) -> None:
        self.stage = _Stage.CLOSED
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.gated:  # a handshake slot is given back however the handshake ends
            self.gated = False
            self.server.gate.release(self.addr)


class GroupServer:
    """Hosted by the coordinator pod's wrapper; binds the pod's own address.

    with GroupServer(bind=(pod_ip, contract.GROUP_PORT), world=world, token=token, attempt=a) as srv:
        ...  # srv.address is the bound (host, port); the wrapper also joins as a GroupMember
    """

    def __init__(self, *, bind: tuple[str, int] | str, world: list[MemberId], token: bytes | None,
                 insecure: bool = False, attempt: int, heartbeat: float = 0.5, deadline: float = 3.0,
                 handshake_timeout: float = 5.0, on_up=None, leaders: bool = False,
                 slices: list[list[MemberId]] | None = None, known: KnownPods | None = None,
                 listener: socket.socket | None = None, loop: asyncio.AbstractEventLoop | None = None):
        """loop: an event loop running in another thread, shared by the servers of one process (as
        members share a reactor, member.py: N servers then cost one thread, not N contending for
        the interpreter); None: a thread and a loop of its own."""
        self._key = check_auth(token, insecure)
        self._shared_loop = loop
        self._ran = None  # the concurrent.futures.Future of _main on a shared loop
        if isinstance(bind, str):
            bind = (bind, contract.GROUP_PORT)
        self._bind = bind
        # listener: bound to `bind` already (listener.py: opened before asyncio was imported); else
        # start() opens it.
        self._listener = listener
        # on_up(msg): relay mode (relay.py) -- collective steps go to the leaders' group.
        self._on_up = on_up
        # leaders=True: the leaders' group of the tree, whose members relay their slices' failures;
        # slices: each leader's slice (its first member is the leader), what a relayed failure may name.
        self._leaders = leaders or slices is not None
        self._slices = {s[0].rank: frozenset(s) for s in slices} if slices else None
        # known: the world's pods resolved from DNS -- admitted first, and a rank is bound to
        # its pod's address (docs/fail-fast.md, Threat model).  None: no binding (tests, bench).
        self.known = known
        self.state = GroupState(list(world), attempt, relay=on_up is not None, bound=known is not None)
        self.heartbeat, self.deadline, self.handshake_timeout = heartbeat, deadline, handshake_timeout
        # A member that heard something else since the last tick may go without that tick's heartbeat,
        # so it hears from the server every two heartbeats at worst: only where its deadline (the
        # wrapper gives both sides the same) leaves room for that, with a heartbeat to spare.
        self._may_skip = deadline >= 3 * heartbeat
        self._conns: dict[int, _Conn] = {}  # the members' connections (SERVING), by rank
        self._open: set[_Conn] = set()  # every connection whose transport has not closed yet
        self._no_conns = threading.Event()  # set while no member is connected (drain waits on it)
        self._no_conns.set()
        self._hb: bytes | None = None  # the heartbeat, encoded; None once an event changed the state
        self._ticker: asyncio.TimerHandle | None = None
        self._pause = 0.0  # accept()'s pause while the process is out of descriptors
        self._accepting: asyncio.TimerHandle | None = None  # the end of that pause
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self.address: tuple[str, int] | None = None
        self.rejected = 0  # connections refused at accept, or closed for breaking the protocol or failing auth
        self.gate = admission.Gate(admission.Limits.for_members(len(world), handshake_timeout),
                                   known=known or (lambda addr: False))
        self.refusals = admission.RefusalLog(f"group: {bind[0]}:{bind[1]}", logger=log)
        # Authenticated joins refused for now (a pod's DNS record not there yet, a rank already
        # connected): every member retries them, so they are summed up too.
        self.claims = admission.RefusalLog(f"group: {bind[0]}:{bind[1]}", logger=log, noun="join")

    # --- thread-side API ------------------------------------------------------------
    def start(self) -> tuple[str, int]:
        if self._listener is None:
            self._listener = open_listener(self._bind, len(self.state.world))
        ready = threading.Event()
        errors: list[BaseException] = []
        if self._shared_loop is not None:
            self._ran = asyncio.run_coroutine_threadsafe(self._run(ready, errors), self._shared_loop)
        else:
            self._thread = threading.Thread(target=lambda: asyncio.run(self._run(ready, errors)),
                                            name="group-server", daemon=True)
            self._thread.start()
        ready.wait()
        if errors:
            raise errors[0]
        return self.address

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            try:
                self._loop.call_soon_threadsafe(self._stopped.set)
            except RuntimeError:
                pass  # loop already closed
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._ran is not None:
            concurrent.futures.wait([self._ran], timeout=5)

    def drain(self, timeout: float) -> None:
        """Wait (up to timeout) until every member has hung up, so a last broadcast reaches them."""
        self._no_conns.wait(timeout)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    @property
    def phase(self) -> Phase:
        return self.state.phase

    @property
    def epoch(self) -> int:
        return self.state.epoch

    # --- event loop -------------------------------------------------------------------
    async def _run(self, ready: threading.Event, errors: list) -> None:
        try:
            await self._main(ready)
        except BaseException as e:  # reported to start() or logged
            errors.append(e)
            if ready.is_set():
                log.exception("group: server stopped on an error")
        finally:
            ready.set()

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        admission.raise_nofile_limit()
        listener = self._listener
        self.address = listener.getsockname()[:2]
        self.refusals.what = self.claims.what = f"group: {join_host_port(*self.address)}"
        if self.known is not None:
            self.known.start()
        log.info("group: coordinator listening on %s for %d members (attempt %d)",
                 join_host_port(*self.address), len(self.state.world), self.state.attempt)
        ready.set()
        self._ticker = self._loop.call_later(self.heartbeat, self._tick)
        self._listen()
        try:
            await self._stopped.wait()
        finally:
            self._ticker.cancel()
            self._loop.remove_reader(listener.fileno())
            if self._accepting is not None:
                self._accepting.cancel()
            listener.close()
            if self.known is not None:
                self.known.stop()
            self.refusals.flush_due(force=True)
            self.claims.flush_due(force=True)
            for conn in list(self._open):
                conn.close()
            await asyncio.sleep(0)  # the transports with nothing left to send close now
            for conn in list(self._open):
                conn.transport.abort()  # the others: their members stopped reading
            await asyncio.sleep(0)

    def _listen(self) -> None:
        self._accepting = None
        self._loop.add_reader(self._listener.fileno(), self._accept)

    def _accept(self) -> None:
        """The listener is readable: accept what waits, up to _ACCEPT_BATCH, each connection through
        admission (admission.py) before anything is built for it; while the process is out of
        descriptors, a growing pause instead of a loop."""
        listener, gate, loop = self._listener, self.gate, self._loop
        for i in range(_ACCEPT_BATCH):
            if i and gate.crowded():
                return  # one per turn from here (admission.Gate.crowded): the others stay in the backlog
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if admission.out_of_resources(e):
                    self.rejected += 1
                    self.refusals.note(None, f"accept() failed: {e.strerror}")
                    self._pause = admission.accept_backoff(self._pause)
                    loop.remove_reader(listener.fileno())
                    self._accepting = loop.call_later(self._pause, self._listen)
                    return
                log.debug("group: accept() failed: %s", e)  # the client gave up before accept (ECONNABORTED, ...)
                continue
            self._pause = 0.0
            addr = peer[0]
            refusal = gate.admit(addr)
            if refusal is not None:
                self.rejected += 1
                self.refusals.note(addr, refusal)
                sock.close()
                continue
            conn = _Conn(self, addr, peer)
            try:
                sock.setblocking(False)
                # The loop's own transport for an accepted socket (it sets TCP_NODELAY), made
                # directly: the public connect_accepted_socket() is a coroutine, so a task and a
                # future per connection (twice the transport's own cost, measured on 3.11), which is
                # what this avoids.
                conn.transport = loop._make_socket_transport(sock, conn)
            except Exception as e:  # OSError: the socket went; anything else: a loop without it
                if not isinstance(e, OSError):
                    log.exception("group: cannot serve the connection from %s", join_host_port(*peer[:2]))
                conn._end()
                sock.close()
                continue
            self._open.add(conn)

    def upstream(self, event: str, failure: Failure | None = None, names_resolved: bool = False) -> None:
        """Relay mode, from any thread: the leaders' group's answer (start, abort, complete, restart)."""
        def apply():
            step = getattr(self.state, f"up_{event}")
            if event == "abort":
                self._apply(step(failure))
            elif event == "start":
                self._apply(step(names_resolved))
            else:
                self._apply(step())

        try:
            self._loop.call_soon_threadsafe(apply)
        except (AttributeError, RuntimeError):
            log.warning("group: slice server not running; dropped the leaders' %s", event)

    def call_later(self, delay: float, fn, *args) -> None:
        """fn(*args) on the server's loop after delay; from the loop's thread (relay.py)."""
        self._loop.call_later(delay, fn, *args)

    def _apply(self, outs) -> None:
        """What the state decided on an event, sent.  Every event passes here: the cached heartbeat goes."""
        self._hb = None
        for to, msg in outs:
            if to == UP:
                self._on_up(msg)
                continue
            targets = list(self._conns.values()) if to == ALL else [c for c in [self._conns.get(to)] if c]
            data = wire.encode(msg)  # once per message; each connection seals it with its own key and seq
            for conn in targets:
                conn.send_encoded(data)

    def _tick(self) -> None:
        """Every heartbeat: judge silence, then send the heartbeat to the others -- to those this
        server sent nothing else since its last tick.  A member that had its welcome, the start or
        an abort less than a heartbeat ago has heard from the server: it hears from it at least
        every two heartbeats (1 s by default, against a 3 s deadline), and a gang start costs a
        heartbeat less, on both sides, for every member welcomed since the last tick.

        After a stall of the loop (a loaded node), the frames that arrived meanwhile are read
        before this runs: asyncio runs a turn's I/O callbacks (data_received) before its timers."""
        loop = self._loop
        self._ticker = loop.call_later(self.heartbeat, self._tick)
        now = loop.time()
        hb = self._hb
        if hb is None:  # the state changed since the last tick: encoded again, once for every connection
            hb = self._hb = wire.encode(self.state.heartbeat())
        self.refusals.flush_due()
        self.claims.flush_due()
        deadline = self.deadline
        for conn in list(self._conns.values()):
            if now - conn.last > deadline:
                log.error("group: %s silent for %.1f s; counting it as vanished",
                          self.state.world[conn.rank], now - conn.last)
                conn.close()
                self._drop(conn, f"silent for more than {deadline:g} s (node or wrapper vanished)")
            elif conn.spoke and self._may_skip:
                conn.spoke = False
            else:
                conn.send_encoded(hb)
                conn.spoke = False

    def _bound(self, hello: dict, addr: str) -> tuple[str, bool] | None:
        """A rank is bound to its pod: the claim must come from the address the pod's DNS name
        resolves to (None: it does, or no binding).  A name is asked for when its pod first claims
        it (KnownPods on_claim), or again when it held another address (DNS may still hold the old
        IP of a recreated pod): _claim then waits for that answer, up to LOOKUP_WAIT, before asking
        here.  Still no record, or another address: refused for now, and the member retries."""
        if self.known is None:
            return None
        pod = hello["pod"]
        want = self.known.address_of(pod)
        if want == addr:
            return None
        if want is None:
            return f"pod {one_line(pod, 64)} has no DNS record yet to check its address against", True
        return f"pod {one_line(pod, 64)} has address {want}, not {addr}", True

    def _claim(self, conn: _Conn) -> None:
        """An authenticated hello: refused, welcomed, or (its pod's address not the one it came
        from, or not known yet) waiting for its pod's name to be looked up."""
        hello = conn.hello
        refusal = self.state.admit(hello)
        if refusal is None and self.known is not None and self.known.address_of(hello["pod"]) != conn.addr:
            conn.await_lookup(self.known)
            return
        self._decide(conn, refusal)

    def _decide(self, conn: _Conn, refusal: tuple[str, bool] | None) -> None:
        hello, peer = conn.hello, conn.peer
        rank = hello["rank"]
        if refusal is None and rank in self._conns:
            # A rank that joined is not taken over: the one holding it keeps it until its
            # connection is lost (closed, or silent past the deadline); a member that really
            # reconnects is told to retry until then.
            refusal = (f"rank {rank} is already connected from {self._conns[rank].peer[0]}", True)
        if refusal is not None:
            reason, retry = refusal
            if retry:
                self.claims.note(conn.addr, reason)
                log.debug("group: refused rank %d (pod %s) from %s for now: %s", rank,
                          one_line(hello["pod"], 64), peer, reason)
            else:
                log.warning("group: refused rank %d (pod %s) from %s: %s", rank, one_line(hello["pod"], 64),
                            peer, reason)
            conn.transport.write(conn.session.seal({"t": "refused", "attempt": self.state.attempt,
                                                    "epoch": self.state.epoch, "reason": reason, "retry": retry}))
            conn.close()
            return
        conn.rank, conn.last, conn.stage = rank, self._loop.time(), _Stage.SERVING
        self._conns[rank] = conn
        self._no_conns.clear()
        conn.send({"t": "welcome", "attempt": self.state.attempt, "epoch": self.state.epoch})
        log.debug("group: %s joined from %s", self.state.world[rank], peer)
        self._apply(self.state.join(rank))

    def _rejected(self, conn: _Conn, note: str, why: str) -> None:
        """A connection that did not get through the handshake (the caller closes it)."""
        self.rejected += 1
        self.refusals.note(conn.addr, note)
        log.debug("group: rejected a connection from %s: %s", conn.peer, why)

    def _lost(self, conn: _Conn, why: str) -> None:
        """A member's connection ended (closed, reset, broke the protocol, stopped reading)."""
        # After `done`, the completion or an abort, hanging up is how a member leaves.
        quiet = conn.rank in self.state.done or self.state.phase in (Phase.COMPLETE, Phase.ABORTED)
        (log.debug if quiet else log.warning)("group: lost %s: %s", self.state.world[conn.rank], why)
        self._drop(conn, f"connection lost ({why})")

    def _drop(self, conn: _Conn, cause: str) -> None:
        if self._conns.get(conn.rank) is conn:
            del self._conns[conn.rank]
            if not self._conns:
                self._no_conns.set()
            self._apply(self.state.leave(conn.rank, cause))

    def _handle(self, conn: _Conn, msg: dict) -> None:
        kind = msg["t"]
        if msg["attempt"] != self.state.attempt:
            log.warning("group: dropped %s from %s of attempt %d", kind, self.state.world[conn.rank], msg["attempt"])
            return
        if kind == "hb":
            return
        if kind == "fail":
            origin = None
            if "origin_rank" in msg:  # relayed by a slice leader (relay.py)
                if not (wire.typed(msg["origin_rank"], int) and wire.typed(msg.get("origin_pod"), str)):
                    raise wire.ProtocolError("fail message with a malformed origin")
                origin = MemberId(msg["origin_rank"], msg["origin_pod"][:253])
                if not self._in_slice_of(conn.rank, origin):
                    raise wire.ProtocolError(f"rank {conn.rank} may not report a failure of rank {origin.rank} "
                                             f"(pod {one_line(origin.pod, 64)}): not a pod of its own slice")
            self._apply(self.state.fail(conn.rank, msg["code"], msg["cause"], msg["epoch"], origin))
        elif kind == "done":
            self._apply(self.state.finish(conn.rank, msg["epoch"]))
        elif kind == "barrier":
            self._apply(self.state.barrier(conn.rank, msg["epoch"]))
        else:
            raise wire.ProtocolError(f"a member may not send {kind}")


    def _in_slice_of(self, leader: int, origin: MemberId) -> bool:
        """A leader speaks for its own slice only: a rank and pod of that slice, when the slices
        are known; else a rank from its own up to the next leader's (each Job's ranks are
        contiguous and its leader is its first pod)."""
        if self._slices is not None:
            return origin in self._slices.get(leader, ())
        if not self._leaders:
            return False
        later = [r for r in self.state.world if r > leader]
        return leader <= origin.rank < (min(later) if later else float("inf"))


def _why(e: BaseException | None) -> str:
    if e is None:
        return "closed"
    return str(e) or e.__class__.__name__
