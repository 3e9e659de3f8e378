"""The coordinator's side of the group channel: an asyncio TCP server in its own thread.

It authenticates each connection (wire.py), feeds the events to GroupState (state.py)
and writes out what the state decides.  A connection that breaks the protocol is closed
and logged; before authentication that touches nothing else.  Liveness: every frame
from a member counts; one silent past `deadline` is closed and counts as vanished.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import threading

from .. import contract
from ..addresses import join_host_port
from .. import admission
from ..admission import KnownPods
from ..log import one_line
from . import wire
from .listener import open_listener
from .state import ALL, UP, Failure, GroupState, MemberId, Phase
from .wire import check_auth

log = logging.getLogger("jobset_runtime.group")

_WRITE_BUFFER_MAX = 1 << 20  # a member that stops reading is treated as vanished
# Longest a claim waits for its pod's name to be looked up: well inside the member's wait for its
# welcome (member.py), so a slow answer means one retry, never a welcome the member gave up on.
LOOKUP_WAIT = 2.0


class _Conn:
    __slots__ = ("last", "peer", "rank", "session", "writer")

    def __init__(self, rank, writer, session, last, peer):
        self.rank, self.writer, self.session, self.last, self.peer = rank, writer, session, last, peer

    def send(self, msg: dict) -> None:
        self.send_encoded(wire.encode(msg))

    def send_encoded(self, data: bytes) -> None:
        """A message already encoded (a broadcast encodes once), sealed for this connection."""
        if self.writer.is_closing():
            return
        if self.writer.transport.get_write_buffer_size() > _WRITE_BUFFER_MAX:
            log.warning("group: rank %d does not read its messages; closing it", self.rank)
            self.writer.close()
            return
        self.writer.write(self.session.seal_encoded(data))


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
        self._conns: dict[int, _Conn] = {}
        self._no_conns = threading.Event()  # set while no member is connected (drain waits on it)
        self._no_conns.set()
        self._tasks: set[asyncio.Task] = set()
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
        ticker = asyncio.create_task(self._tick())
        acceptor = asyncio.create_task(self._accept(listener))
        try:
            await self._stopped.wait()
        finally:
            ticker.cancel()
            acceptor.cancel()
            listener.close()
            if self.known is not None:
                self.known.stop()
            self.refusals.flush_due(force=True)
            self.claims.flush_due(force=True)
            for conn in list(self._conns.values()):
                conn.writer.close()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(acceptor, *tasks, return_exceptions=True)

    async def _accept(self, listener: socket.socket) -> None:
        """One connection at a time: admission (admission.py) before anything is built for it,
        and a growing pause, not a loop, while the process is out of descriptors."""
        pause = 0.0
        while True:
            try:
                sock, peer = await self._loop.sock_accept(listener)
            except OSError as e:
                if listener.fileno() == -1:
                    return
                if admission.out_of_resources(e):
                    self.rejected += 1
                    self.refusals.note(None, f"accept() failed: {e.strerror}")
                    pause = admission.accept_backoff(pause)
                    await asyncio.sleep(pause)
                else:  # the client gave up before accept (ECONNABORTED, ...)
                    log.debug("group: accept() failed: %s", e)
                continue
            pause = 0.0
            addr = peer[0]
            refusal = self.gate.admit(addr)
            if refusal is not None:
                self.rejected += 1
                self.refusals.note(addr, refusal)
                sock.close()
                continue
            try:
                reader, writer = await asyncio.open_connection(sock=sock)
            except OSError:
                self.gate.release(addr)
                sock.close()
                continue
            self._tasks.add(self._loop.create_task(self._serve(reader, writer, addr)))

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
        for to, msg in outs:
            if to == UP:
                self._on_up(msg)
                continue
            targets = list(self._conns.values()) if to == ALL else [c for c in [self._conns.get(to)] if c]
            data = wire.encode(msg)  # once per message; each connection seals it with its own key and seq
            for conn in targets:
                conn.send_encoded(data)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            # After a stall of the loop (a loaded node), the frames that arrived meanwhile are read by
            # tasks woken in this same turn: let them run before anyone is judged silent.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            now = self._loop.time()
            hb = wire.encode(self.state.heartbeat())
            self.refusals.flush_due()
            self.claims.flush_due()
            for conn in list(self._conns.values()):
                if now - conn.last > self.deadline:
                    log.error("group: %s silent for %.1f s; counting it as vanished",
                              self.state.world[conn.rank], now - conn.last)
                    self._drop(conn, f"silent for more than {self.deadline:g} s (node or wrapper vanished)")
                    conn.writer.close()
                else:
                    conn.send_encoded(hb)

    async def _bound(self, hello: dict, addr: str) -> tuple[str, bool] | None:
        """A rank is bound to its pod: the claim must come from the address the pod's DNS name
        resolves to.  A name is asked for when its pod first claims it (KnownPods on_claim), or
        again when it held another address (DNS may still hold the old IP of a recreated pod):
        the claim waits for that answer, up to LOOKUP_WAIT.  Still no record, or another address:
        refused for now, and the member retries."""
        if self.known is None:
            return None
        pod = hello["pod"]
        want = self.known.address_of(pod)
        if want != addr:
            loop, answered = self._loop, self._loop.create_future()

            def then():
                try:
                    loop.call_soon_threadsafe(lambda: answered.done() or answered.set_result(None))
                except RuntimeError:
                    pass  # the server stopped meanwhile

            self.known.claim(pod, then)
            try:
                await asyncio.wait_for(answered, LOOKUP_WAIT)
            except asyncio.TimeoutError:
                pass
            want = self.known.address_of(pod)
        if want == addr:
            return None
        if want is None:
            return f"pod {one_line(pod, 64)} has no DNS record yet to check its address against", True
        return f"pod {one_line(pod, 64)} has address {want}, not {addr}", True

    def _drop(self, conn: _Conn, cause: str) -> None:
        if self._conns.get(conn.rank) is conn:
            del self._conns[conn.rank]
            if not self._conns:
                self._no_conns.set()
            self._apply(self.state.leave(conn.rank, cause))

    async def _read(self, reader: asyncio.StreamReader, limit: int) -> bytes:
        n = wire.body_length(await reader.readexactly(wire.HEADER.size), limit)
        return await reader.readexactly(n)

    async def _handshake(self, reader, writer):
        hello_b = await self._read(reader, wire.MAX_HANDSHAKE_FRAME)
        hello = wire.expect(hello_b, "hello")
        wire.check_nonce(hello["nonce"])
        if hello["v"] != wire.VERSION:
            raise wire.ProtocolError(f"protocol version {hello['v']} (this side speaks {wire.VERSION})")
        challenge_b = wire.encode({"t": "challenge", "v": wire.VERSION, "attempt": self.state.attempt,
                                   "epoch": self.state.epoch, "nonce": wire.nonce()})
        proof = wire.server_proof(self._key, hello_b, challenge_b)
        writer.write(wire.frame(challenge_b) + wire.frame(wire.encode({"t": "proof", "proof": proof})))
        answer = wire.expect(await self._read(reader, wire.MAX_HANDSHAKE_FRAME), "proof")
        if not wire.proof_ok(answer["proof"], wire.member_proof(self._key, hello_b, challenge_b)):
            raise wire.ProtocolError(f"wrong token (claimed rank {hello['rank']}, pod {hello['pod'][:64]!r})")
        return wire.server_session(wire.session_key(self._key, hello_b, challenge_b)), hello

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, addr: str) -> None:
        """A connection admitted by _accept: the handshake within its deadline (its slot is given
        back however it ends), then the member's messages."""
        peer = writer.get_extra_info("peername")
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = None
        try:
            try:
                session, hello = await asyncio.wait_for(self._handshake(reader, writer), self.handshake_timeout)
            except (wire.ProtocolError, asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError) as e:
                self.rejected += 1
                self.refusals.note(addr, _why(e) if isinstance(e, asyncio.TimeoutError) else "handshake failed")
                log.debug("group: rejected a connection from %s: %s", peer, _why(e))
                return
            finally:
                self.gate.release(addr)
            self.gate.learn(addr)
            # Checked again after the lookup: the group may have moved on while it was answered.
            refusal = self.state.admit(hello) or await self._bound(hello, addr) or self.state.admit(hello)
            rank = hello["rank"]
            if refusal is None and rank in self._conns:
                # A rank that joined is not taken over: the one holding it keeps it until its
                # connection is lost (closed, or silent past the deadline); a member that really
                # reconnects is told to retry until then.
                refusal = (f"rank {rank} is already connected from {self._conns[rank].peer[0]}", True)
            if refusal is not None:
                reason, retry = refusal
                if retry:
                    self.claims.note(addr, reason)
                    log.debug("group: refused rank %d (pod %s) from %s for now: %s", rank,
                              one_line(hello["pod"], 64), peer, reason)
                else:
                    log.warning("group: refused rank %d (pod %s) from %s: %s", rank, one_line(hello["pod"], 64),
                                peer, reason)
                writer.write(session.seal({"t": "refused", "attempt": self.state.attempt,
                                           "epoch": self.state.epoch, "reason": reason, "retry": retry}))
                await writer.drain()
                return
            conn = _Conn(rank, writer, session, self._loop.time(), peer)
            self._conns[rank] = conn
            self._no_conns.clear()
            conn.send({"t": "welcome", "attempt": self.state.attempt, "epoch": self.state.epoch})
            log.debug("group: %s joined from %s", self.state.world[rank], peer)
            self._apply(self.state.join(rank))
            # Whatever the socket holds at once, split here: one wake-up of this task per read,
            # not two per frame (a leader reads a frame from each of its members per heartbeat).
            frames = wire.FrameBuffer(wire.MAX_FRAME)
            while True:
                data = await reader.read(65536)
                if not data:
                    raise asyncio.IncompleteReadError(b"", None)
                conn.last = self._loop.time()
                for body in frames.feed(data):
                    self._handle(conn, session.open(body))
        except (wire.ProtocolError, asyncio.IncompleteReadError, ConnectionError, OSError) as e:
            if conn is not None:
                # After `done`, the completion or an abort, hanging up is how a member leaves.
                quiet = conn.rank in self.state.done or self.state.phase in (Phase.COMPLETE, Phase.ABORTED)
                (log.debug if quiet else log.warning)("group: lost %s: %s", self.state.world[conn.rank], _why(e))
                self._drop(conn, f"connection lost ({_why(e)})")
        except asyncio.CancelledError:
            pass  # the server is stopping; end quietly
        finally:
            self._tasks.discard(asyncio.current_task())
            writer.close()

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


def _why(e: BaseException) -> str:
    if isinstance(e, asyncio.IncompleteReadError):
        return "closed mid-frame" if e.partial else "closed"
    if isinstance(e, asyncio.TimeoutError):
        return "handshake timed out"
    return str(e) or e.__class__.__name__
