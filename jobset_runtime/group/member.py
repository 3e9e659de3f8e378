"""A wrapper's side of the group channel: one background thread per member.

The supervisor's loop is synchronous, so the member offers blocking calls with
deadlines (join, finish, restart_barrier) and reports an abort two ways: the
`aborted` event with `abort_cause`, and callbacks registered with `on_abort` (run on
the member's thread: keep them short, e.g. signal the child's process group).

Member phases:

    CONNECTING --welcome--> WAITING --start--> RUNNING --finish()--> FINISHING --complete--> COMPLETE
        ^  (connection lost before the start: reconnect)     |            |
        +-----------------------------------------------------+            |
                          abort / lost or silent coordinator  v            v
                                                          ABORTED <--------+
                                                             | restart_barrier()
                                                          BARRIER --restart--> RUNNING (epoch + 1)
    any --close()--> CLOSED
"""

from __future__ import annotations

import enum
import errno
import logging
import select
import socket
import threading
import time

from .. import admission, contract
from ..errors import ConfigError, JobSetRuntimeError, PeersTimeout, first_few
from ..log import one_line
from . import wire
from .state import Failure, MemberId
from .wire import check_auth

log = logging.getLogger("jobset_runtime.group")


class GroupAborted(JobSetRuntimeError):
    """The group stopped because another pod (or the coordinator) failed first."""

    exit_code = contract.EXIT_PEER_FAILED

    def __init__(self, failure: Failure):
        super().__init__(failure.describe())
        self.failure = failure


class MemberPhase(str, enum.Enum):
    NEW = "new"
    CONNECTING = "connecting"
    WAITING = "waiting"
    RUNNING = "running"
    FINISHING = "finishing"
    COMPLETE = "complete"
    ABORTED = "aborted"
    BARRIER = "barrier"
    CLOSED = "closed"


# After a connection refused (nothing listens on the port yet: the server's wrapper is starting),
# the server's address is kept this long after it was looked up and tried again without a new DNS
# query; past it, asked again (a recreated pod's old address may now answer for another pod).
KEEP_REFUSED_ADDRESS = 1.0


class _Refused(Exception):
    def __init__(self, reason: str, retry: bool):
        super().__init__(reason)
        self.retry = retry


class GroupMember:
    def __init__(self, *, server: tuple[str, int] | str, me: MemberId, world: list[MemberId],
                 token: bytes | None, insecure: bool = False, attempt: int,
                 heartbeat: float = 0.5, deadline: float = 3.0, connect_timeout: float = 2.0,
                 source: str | None = None, resolve=None):
        self._key = check_auth(token, insecure)
        self.server = (server, contract.GROUP_PORT) if isinstance(server, str) else tuple(server)
        ranks = {m.rank: m for m in world}
        if ranks.get(me.rank) != me:
            raise ConfigError(f"group member {me} is not in the group's world ({first_few(sorted(world))})")
        self.me, self.world, self.attempt = me, sorted(world), attempt
        self.heartbeat, self.deadline, self.connect_timeout = heartbeat, deadline, connect_timeout
        # The pod's own address as the source, so the coordinator sees the address its DNS name
        # has (a pod with several addresses, or loopback pods, would otherwise send from another).
        self.source = source
        # resolve(name) -> ip: how the server's name is looked up (peers.resolve_one: one A query
        # to cluster DNS, docs/peers.md), raising LookupError while its record is missing; asked
        # again only after a connection to the address failed.  None: the system's getaddrinfo.
        self._resolve = resolve
        self._address: str | None = None
        self._address_at = 0.0  # when it was looked up (time.monotonic)
        # The start said every name of the world resolved at the servers (state.py, `bound`).
        self.names_resolved = False
        self._backoff = admission.Backoff()
        self.epoch = 0
        self.phase = MemberPhase.NEW
        self.aborted = threading.Event()
        self.abort_cause: Failure | None = None
        self._cond = threading.Condition()
        self._callbacks = []
        self._sock: socket.socket | None = None
        self._session: wire.Session | None = None
        self._send_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._refused: str | None = None  # a refusal that retrying cannot fix
        self._config_error: ConfigError | None = None  # e.g. no DNS server to ask
        self._last_error = "no answer yet"
        self._missing: list[MemberId] | None = None
        self._n_missing: int | None = None

    def __repr__(self):
        return f"GroupMember({self.me}, {self.phase.value}, epoch {self.epoch})"

    # --- API for the supervisor -------------------------------------------------------
    def on_abort(self, callback) -> None:
        """callback(Failure), once per abort, on the member's thread (or now, if already aborted)."""
        with self._cond:
            self._callbacks.append(callback)
            cause = self.abort_cause if self.aborted.is_set() else None
        if cause is not None:
            callback(cause)

    def join(self, timeout: float) -> None:
        """Gang start: return once every member of the world has joined (epoch 0)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if self.phase is not MemberPhase.NEW:
                raise RuntimeError(f"join() on a member in phase {self.phase.value}")
            self.phase = MemberPhase.CONNECTING
        self._thread = threading.Thread(target=self._run, args=(deadline,), daemon=True,
                                        name=f"group-member-{self.me.rank}")
        self._thread.start()
        with self._cond:
            self._cond.wait_for(lambda: self.phase not in (MemberPhase.CONNECTING, MemberPhase.WAITING)
                                or self._refused is not None, timeout)
            phase, refused = self.phase, self._refused
        if phase is MemberPhase.RUNNING:
            return
        if phase is MemberPhase.ABORTED:
            raise GroupAborted(self.abort_cause)
        self._shutdown()
        host, port = self.server
        if self._config_error is not None:
            raise self._config_error
        if refused is not None:
            raise GroupAborted(Failure(None, host, None, f"refused this member: {refused}"))
        missing = ""
        if self._n_missing:
            shown, more = first_few(self._missing), self._n_missing - len(self._missing)
            missing = f"{shown}{f' (+{more} more)' if more > 0 else ''}"
        if phase is MemberPhase.WAITING and missing:
            raise PeersTimeout(
                f"gang start: after {timeout:g} s, {self._n_missing} of {len(self.world)} group members "
                f"had not joined the coordinator at {host}:{port}: {missing}; "
                "check those pods (scheduled? their wrapper started? same group token?)")
        if phase is MemberPhase.WAITING:
            raise PeersTimeout(
                f"gang start: every member joined the coordinator at {host}:{port}, but the group did "
                f"not start within {timeout:g} s: the slice leaders' group is still missing some slices")
        # Lost the coordinator after joining (it may have given up on the same missing
        # members a moment earlier): what it last reported is the likelier cause.
        last = (f"; when last connected, {self._n_missing} of {len(self.world)} members had not joined: {missing}"
                if missing else "")
        raise PeersTimeout(
            f"gang start: could not join the group coordinator at {host}:{port} within {timeout:g} s "
            f"as {self.me}: {self._last_error}{last}")

    def report_failure(self, exit_code: int | None, cause: str, origin: MemberId | None = None) -> None:
        """Tell the group this member's child failed; the abort comes back to every member.

        origin: a slice leader relays the failure of one of its slice's members."""
        cause = one_line(cause, wire.MAX_CAUSE)
        log.error("group: reporting failure of %s: exit code %s: %s", origin or self.me, exit_code, cause)
        msg = {"t": "fail", "attempt": self.attempt, "epoch": self.epoch, "code": exit_code, "cause": cause}
        if origin is not None:
            msg.update(origin_rank=origin.rank, origin_pod=origin.pod)
        self._send(msg)

    def finish(self, timeout: float | None = None) -> bool:
        """This member's child succeeded: wait for the whole group.

        True when every member finished; False when the group aborted meanwhile (see
        abort_cause).  Raises PeersTimeout when neither happens within timeout."""
        with self._cond:
            if self.phase is MemberPhase.RUNNING:
                self.phase = MemberPhase.FINISHING
                send = True
            else:
                send = False
        if send:
            self._send({"t": "done", "attempt": self.attempt, "epoch": self.epoch})
        with self._cond:
            ok = self._cond.wait_for(lambda: self.phase in (MemberPhase.COMPLETE, MemberPhase.ABORTED,
                                                            MemberPhase.CLOSED), timeout)
            if not ok:
                raise PeersTimeout(f"the group did not finish within {timeout:g} s of {self.me} finishing")
            return self.phase is MemberPhase.COMPLETE

    def restart_barrier(self, timeout: float) -> int:
        """After an abort: meet every member, then return the new epoch to restart the child with."""
        end = time.monotonic() + timeout
        with self._cond:
            # A member that just reported its own failure may not have heard the abort yet.
            self._cond.wait_for(lambda: self.phase not in (MemberPhase.RUNNING, MemberPhase.FINISHING), timeout)
            if self.phase is not MemberPhase.ABORTED:
                raise RuntimeError(f"restart_barrier() in phase {self.phase.value}; only after an abort")
            if self._sock is None:
                raise GroupAborted(self.abort_cause)
            self.phase = MemberPhase.BARRIER
            epoch = self.epoch
        self._send({"t": "barrier", "attempt": self.attempt, "epoch": epoch})
        with self._cond:
            self._cond.wait_for(lambda: self.phase is not MemberPhase.BARRIER, max(0.0, end - time.monotonic()))
            phase, new_epoch, cause = self.phase, self.epoch, self.abort_cause
        if phase is MemberPhase.RUNNING and new_epoch == epoch + 1:
            return new_epoch
        if phase is MemberPhase.BARRIER:
            self._shutdown()
            raise PeersTimeout(f"restart barrier for epoch {epoch + 1}: not every group member "
                               f"arrived within {timeout:g} s")
        raise GroupAborted(cause)

    def close(self, success: bool = False) -> None:
        """Leave the group; success=True first tells the coordinator this member finished."""
        if success and self.phase is MemberPhase.RUNNING:
            self._send({"t": "done", "attempt": self.attempt, "epoch": self.epoch})
        self._shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- internals --------------------------------------------------------------------
    def _shutdown(self) -> None:
        with self._cond:
            self._closing = True
            if self.phase not in (MemberPhase.ABORTED, MemberPhase.COMPLETE):
                self.phase = MemberPhase.CLOSED
            self._cond.notify_all()
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _send(self, msg: dict) -> None:
        with self._send_lock:
            sock, session = self._sock, self._session
            if sock is None or session is None:
                log.warning("group: not connected; could not send %s", msg["t"])
                return
            try:
                sock.sendall(session.seal(msg))
            except OSError as e:
                log.warning("group: could not send %s: %s", msg["t"], e)

    def _set_phase(self, phase: MemberPhase) -> None:
        with self._cond:
            self.phase = phase
            self._cond.notify_all()

    def _abort(self, failure: Failure) -> None:
        with self._cond:
            if self.phase in (MemberPhase.ABORTED, MemberPhase.COMPLETE, MemberPhase.CLOSED):
                return
            self.phase = MemberPhase.ABORTED
            self.abort_cause = failure
            self.aborted.set()
            callbacks = list(self._callbacks)
            self._cond.notify_all()
        log.error("group: abort (%s): %s", self.me, failure.describe())
        for cb in callbacks:
            try:
                cb(failure)
            except Exception:
                log.exception("group: abort callback failed")

    def _run(self, join_deadline: float) -> None:
        # Turned away (slots full, not yet verifiable) or lost before the start: try again
        # after a growing pause, never at once (two clients claiming one rank would swap).
        backoff = self._backoff
        try:
            while not self._closing:
                try:
                    self._connect(join_deadline)
                except ConfigError as e:
                    with self._cond:
                        self._config_error = e
                        self._refused = str(e)
                        self._cond.notify_all()
                    return
                except (OSError, LookupError, wire.ProtocolError, _Refused) as e:
                    self._last_error = str(e) or e.__class__.__name__
                    if isinstance(e, _Refused) and not e.retry:
                        with self._cond:
                            self._refused = str(e)
                            self._cond.notify_all()
                        return
                    if time.monotonic() >= join_deadline:
                        return
                    backoff.sleep(join_deadline, e)
                    continue
                lost = self._serve()
                self._session = None
                if self._closing:
                    return
                with self._cond:
                    waiting = self.phase is MemberPhase.WAITING
                    if waiting:
                        self.phase = MemberPhase.CONNECTING
                if waiting and time.monotonic() < join_deadline:
                    log.warning("group: lost the coordinator before the start (%s); reconnecting", lost)
                    backoff.sleep(join_deadline)
                    continue
                host, port = self.server
                self._abort(Failure(None, f"{host}:{port}", None, f"lost the group coordinator: {lost}"))
                return
        finally:
            sock, self._sock = self._sock, None
            if sock is not None:
                sock.close()

    def _recv_exact(self, sock: socket.socket, n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("the coordinator closed the connection during the handshake")
            data += chunk
        return bytes(data)

    def _recv_frame(self, sock: socket.socket, limit: int) -> bytes:
        return self._recv_exact(sock, wire.body_length(self._recv_exact(sock, wire.HEADER.size), limit))

    def _connect(self, join_deadline: float) -> None:
        left = max(0.05, min(self.connect_timeout, join_deadline - time.monotonic()))
        target = self.server
        if self._resolve is not None:
            if self._address is None:
                self._address = self._resolve(self.server[0])  # LookupError: not there yet, retried
                self._address_at = time.monotonic()
            target = (self._address, self.server[1])
        try:
            sock = socket.create_connection(target, timeout=left,
                                            source_address=(self.source, 0) if self.source else None)
        except OSError as e:
            if not (self.source and e.errno in (errno.EADDRNOTAVAIL, errno.EINVAL)):
                if not (admission.not_listening(e) and time.monotonic() - self._address_at < KEEP_REFUSED_ADDRESS):
                    self._address = None  # the server's pod may have a new address
                raise
            log.warning("group: cannot connect from this pod's address %s (%s); letting the system choose",
                        self.source, e.strerror)
            self.source = None
            sock = socket.create_connection(target, timeout=left)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # As long as the server may take (its handshake deadline, admission.Limits): a member
            # that gave up on a welcome already sent would be counted joined and then lost.
            sock.settimeout(max(self.deadline, left, admission.Limits.deadline))
            hello_b = wire.encode({"t": "hello", "v": wire.VERSION, "attempt": self.attempt, "epoch": self.epoch,
                                   "rank": self.me.rank, "pod": self.me.pod, "nonce": wire.nonce()})
            sock.sendall(wire.frame(hello_b))
            challenge_b = self._recv_frame(sock, wire.MAX_HANDSHAKE_FRAME)
            wire.check_nonce(wire.expect(challenge_b, "challenge")["nonce"])
            proof = wire.expect(self._recv_frame(sock, wire.MAX_HANDSHAKE_FRAME), "proof")
            if not wire.proof_ok(proof["proof"], wire.server_proof(self._key, hello_b, challenge_b)):
                raise wire.ProtocolError("the coordinator could not prove it holds the group token "
                                         "(a different token on one side, or not our coordinator)")
            sock.sendall(wire.frame(wire.encode({"t": "proof",
                                                 "proof": wire.member_proof(self._key, hello_b, challenge_b)})))
            session = wire.member_session(wire.session_key(self._key, hello_b, challenge_b))
            first = session.open(self._recv_frame(sock, wire.MAX_FRAME))
            if first["t"] == "refused":
                raise _Refused(f"the coordinator refused {self.me}: {first['reason']}", first["retry"])
            if first["t"] != "welcome" or first["attempt"] != self.attempt:
                raise wire.ProtocolError(f"expected a welcome for attempt {self.attempt}, got {first['t']}")
        except BaseException:
            sock.close()
            raise
        with self._send_lock:
            self._sock, self._session = sock, session
        with self._cond:
            if self._closing:
                return
            self.epoch = first["epoch"]
            self.phase = MemberPhase.WAITING
            self._cond.notify_all()
        log.debug("group: %s joined the coordinator at %s:%d", self.me, *self.server)

    def _serve(self) -> str:
        """Read and heartbeat until the connection is lost; returns why."""
        sock, session = self._sock, self._session
        buf = wire.FrameBuffer(wire.MAX_FRAME)
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        now = time.monotonic()
        last_rx, next_hb = now, now + self.heartbeat
        try:
            while not self._closing:
                wait = max(0.0, min(next_hb, last_rx + self.deadline) - time.monotonic())
                if poller.poll(wait * 1000):
                    data = sock.recv(65536)
                    if not data:
                        return "the coordinator closed the connection"
                    for body in buf.feed(data):
                        self._handle(session.open(body))
                    last_rx = time.monotonic()
                now = time.monotonic()
                if now - last_rx > self.deadline:
                    if poller.poll(0):
                        # A thread that waited long for the CPU (a loaded node) wakes past the deadline
                        # with the coordinator's frames already queued: read them before judging.
                        continue
                    return f"no word from the coordinator for more than {self.deadline:g} s"
                if now >= next_hb:
                    self._send({"t": "hb", "attempt": self.attempt, "epoch": self.epoch})
                    next_hb = now + self.heartbeat
            return "closed"
        except (OSError, wire.ProtocolError) as e:
            return str(e) or e.__class__.__name__

    def _handle(self, msg: dict) -> None:
        kind = msg["t"]
        if msg["attempt"] != self.attempt:
            log.warning("group: dropped %s of attempt %d (this is attempt %d)", kind, msg["attempt"], self.attempt)
            return
        if kind == "hb":
            if "missing" in msg and isinstance(msg.get("n_missing"), int):
                try:
                    self._missing = [MemberId(int(r), str(p)) for r, p in msg["missing"]]
                    self._n_missing = msg["n_missing"]
                except (TypeError, ValueError):
                    raise wire.ProtocolError("heartbeat with a malformed missing list") from None
            return
        with self._cond:
            phase, epoch = self.phase, self.epoch
        if kind == "restart":
            if msg["epoch"] == epoch + 1 and phase in (MemberPhase.BARRIER, MemberPhase.ABORTED):
                with self._cond:
                    self.epoch = msg["epoch"]
                    self.abort_cause = None
                    self.aborted.clear()
                    self.phase = MemberPhase.RUNNING
                    self._cond.notify_all()
                log.info("group: %s restarts in place as epoch %d", self.me, msg["epoch"])
            else:
                log.warning("group: dropped a restart to epoch %d (at epoch %d, %s)", msg["epoch"], epoch, phase.value)
            return
        if msg["epoch"] != epoch:
            log.warning("group: dropped %s of epoch %d (this is epoch %d)", kind, msg["epoch"], epoch)
            return
        if kind == "start":
            if phase is MemberPhase.WAITING:
                self.names_resolved = msg.get("dns") == "all"
                self._set_phase(MemberPhase.RUNNING)
        elif kind == "abort":
            self._abort(Failure.from_message(msg))
        elif kind == "complete":
            if phase in (MemberPhase.RUNNING, MemberPhase.FINISHING):
                self._set_phase(MemberPhase.COMPLETE)
        else:
            raise wire.ProtocolError(f"the coordinator may not send {kind} now")
