"""A wrapper's side of the group channel: a member driven by a reactor thread (reactor.py).

The supervisor's loop is synchronous, so the member offers blocking calls with
deadlines (join, finish, restart_barrier) and reports an abort two ways: the
`aborted` event with `abort_cause`, and callbacks registered with `on_abort` (run on
the member's reactor thread: keep them short, e.g. signal the child's process group).
A wrapper's member has a reactor of its own; a process that hosts many members (the
scale bench) gives them one to share and drives them without blocking: start_join(),
enter_barrier() and on_phase() callbacks.  The sockets are non-blocking either way.

Member phases:

    CONNECTING --welcome--> WAITING --start--> RUNNING --finish()--> FINISHING --complete--> COMPLETE
        ^  (connection lost before the start: reconnect)     |            |
        +-----------------------------------------------------+            |
                          abort / lost or silent coordinator  v            v
                                                          ABORTED <--------+
                                                             | restart_barrier()
                                                          BARRIER --restart--> RUNNING (epoch + 1)
    any --close()--> CLOSED

One connection goes through stages: CONNECT --writable--> CHALLENGE --challenge--> PROOF
--server's proof checked, member's proof sent--> WELCOME --welcome--> SERVING.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import socket
import threading
import time

from .. import admission, contract
from ..errors import ConfigError, JobSetRuntimeError, PeersTimeout, first_few
from ..log import one_line
from . import wire
from .reactor import READ, WRITE, Reactor
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
# query; past it, asked again (a recreated pod's old address may now answer for another pod).  Each
# time DNS gives the same address back, it is kept twice as long, up to KEEP_REFUSED_MAX: a server
# whose pod has its address (and record) long before its wrapper listens -- an image still pulling --
# costs each member a query per doubling, not one per retry (docs/peers.md, DNS load).
KEEP_REFUSED_ADDRESS = 1.0
KEEP_REFUSED_MAX = 8.0


class _Refused(Exception):
    def __init__(self, reason: str, retry: bool):
        super().__init__(reason)
        self.retry = retry


class _Stage(enum.Enum):
    """Where one connection is (none: between two tries)."""

    CONNECT = "connect"
    CHALLENGE = "challenge"
    PROOF = "proof"
    WELCOME = "welcome"
    SERVING = "serving"


class GroupMember:
    def __init__(self, *, server: tuple[str, int] | str, me: MemberId, world: list[MemberId],
                 token: bytes | None, insecure: bool = False, attempt: int,
                 heartbeat: float = 0.5, deadline: float = 3.0, connect_timeout: float = 2.0,
                 source: str | None = None, resolve=None, reactor: Reactor | None = None):
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
        # ((host, port), (family, sockaddr), or None for a name) of the last server tried.
        self._numeric = None
        self._keep_refused = KEEP_REFUSED_ADDRESS  # how long a refused address is kept (see above)
        self._refused_address: str | None = None  # the address given up after refusals, asked again
        # The start said every name of the world resolved at the servers (state.py, `bound`).
        self.names_resolved = False
        # The start came (a join() that then sees ABORTED: the abort came after it, not instead).
        self.started = False
        self._backoff = admission.Backoff()
        self.epoch = 0
        self.phase = MemberPhase.NEW
        self.aborted = threading.Event()
        self.abort_cause: Failure | None = None
        self._cond = threading.Condition()
        self._callbacks = []
        self._phase_callbacks = []
        # reactor: shared by the members of one process (they then cost one thread together);
        # None: one of its own, stopped by close().
        self._own_reactor = reactor is None
        self._reactor = reactor or Reactor(f"group-member-{me.rank}")
        # The connection; touched on the reactor's thread only.
        self._sock: socket.socket | None = None
        self._session: wire.Session | None = None
        self._stage: _Stage | None = None
        self._frames = wire.FrameBuffer(wire.MAX_HANDSHAKE_FRAME)
        self._out = bytearray()  # sealed frames the socket did not take yet
        # The member's one timer (connect, handshake stage, heartbeat tick or next try), moved
        # from one to the next; None until first armed.
        self._timer = None
        self._hello_b = self._challenge_b = b""
        self._last_rx = self._next_hb = 0.0
        self._join_deadline = 0.0
        self._closing = False
        self._refused: str | None = None  # a refusal that retrying cannot fix
        self._config_error: ConfigError | None = None  # e.g. no DNS server to ask
        self._last_error = "no answer yet"
        self._missing: list[MemberId] | None = None
        self._missing_raw = None  # the last heartbeat's missing list as sent (most repeat it)
        self._n_missing: int | None = None
        self._hb: tuple[int, bytes] | None = None  # (epoch, its heartbeat encoded): one per epoch

    def __repr__(self):
        return f"GroupMember({self.me}, {self.phase.value}, epoch {self.epoch})"

    # --- API for the supervisor -------------------------------------------------------
    def on_phase(self, callback) -> None:
        """callback(member) on the reactor's thread after each phase the coordinator's word (or its
        loss) brings: WAITING, RUNNING (start or restart), ABORTED, COMPLETE.  Do not block in it."""
        self._phase_callbacks.append(callback)

    def on_abort(self, callback) -> None:
        """callback(Failure), once per abort, on the member's thread (or now, if already aborted)."""
        with self._cond:
            self._callbacks.append(callback)
            cause = self.abort_cause if self.aborted.is_set() else None
        if cause is not None:
            callback(cause)

    def start_join(self, timeout: float) -> None:
        """Begin the gang start and return at once (join() waits for it): connect, retrying
        with backoff until `timeout` has passed; on_phase() tells when the group starts."""
        with self._cond:
            if self.phase is not MemberPhase.NEW:
                raise RuntimeError(f"join() on a member in phase {self.phase.value}")
            self.phase = MemberPhase.CONNECTING
        self._join_deadline = time.monotonic() + timeout
        self._reactor.start()
        self._reactor.call_soon(self._attempt)

    def join(self, timeout: float) -> None:
        """Gang start: return once every member of the world has joined (epoch 0)."""
        self.start_join(timeout)
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
        if phase is MemberPhase.WAITING and self._n_missing is None:  # joined, no heartbeat heard yet
            raise PeersTimeout(
                f"gang start: joined the coordinator at {host}:{port}, but the group did not start within "
                f"{timeout:g} s (the coordinator had not yet said who is missing)")
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

    def enter_barrier(self) -> int:
        """After an abort, without waiting: tell the coordinator this member is at the restart
        barrier; returns the epoch being left.  The restart comes as phase RUNNING, epoch + 1."""
        with self._cond:
            if self.phase is not MemberPhase.ABORTED:
                raise RuntimeError(f"restart_barrier() in phase {self.phase.value}; only after an abort")
            if self._sock is None:
                raise GroupAborted(self.abort_cause)
            self.phase = MemberPhase.BARRIER
            epoch = self.epoch
        self._send({"t": "barrier", "attempt": self.attempt, "epoch": epoch})
        return epoch

    def restart_barrier(self, timeout: float) -> int:
        """After an abort: meet every member, then return the new epoch to restart the child with."""
        end = time.monotonic() + timeout
        with self._cond:
            # A member that just reported its own failure may not have heard the abort yet.
            self._cond.wait_for(lambda: self.phase not in (MemberPhase.RUNNING, MemberPhase.FINISHING), timeout)
        epoch = self.enter_barrier()
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

    # --- internals: any thread ----------------------------------------------------------
    def _shutdown(self) -> None:
        with self._cond:
            self._closing = True
            if self.phase not in (MemberPhase.ABORTED, MemberPhase.COMPLETE):
                self.phase = MemberPhase.CLOSED
            self._cond.notify_all()
        reactor = self._reactor
        # A member closed twice (join() gave up, then its owner closed it) finds its own reactor
        # stopped: nothing would run a queued close, so it closes here.
        if reactor.on_thread() or not reactor.running:
            self._close_socket()
        else:
            closed = threading.Event()
            reactor.call_soon(lambda: (self._close_socket(), closed.set()))
            closed.wait(5)
        if self._own_reactor:
            reactor.stop()

    def _send(self, msg: dict) -> None:
        """Seal and send on the reactor's thread (frames are sealed in the order they go out)."""
        if self._reactor.on_thread():
            self._send_now(msg)
        else:
            self._reactor.call_soon(self._send_now, msg)

    def _abort(self, failure: Failure) -> None:
        with self._cond:
            if self.phase in (MemberPhase.ABORTED, MemberPhase.COMPLETE, MemberPhase.CLOSED):
                return
            self.phase = MemberPhase.ABORTED
            self.abort_cause = failure
            self.aborted.set()
            callbacks = list(self._callbacks)
            self._cond.notify_all()
        if log.isEnabledFor(logging.ERROR):  # a process hosting many members may turn it off
            log.error("group: abort (%s): %s", self.me, failure.describe())
        for cb in callbacks:
            try:
                cb(failure)
            except Exception:
                log.exception("group: abort callback failed")
        self._phase_changed()

    # --- internals: the reactor's thread --------------------------------------------------
    def _set_phase(self, phase: MemberPhase) -> None:
        with self._cond:
            self.phase = phase
            self._cond.notify_all()
        self._phase_changed()

    def _phase_changed(self) -> None:
        for cb in self._phase_callbacks:
            try:
                cb(self)
            except Exception:
                log.exception("group: phase callback failed")

    def _send_now(self, msg: dict) -> None:
        self._send_encoded(wire.encode(msg), msg["t"])

    def _send_encoded(self, data: bytes, kind: str) -> None:
        if self._sock is None or self._session is None or self._stage is not _Stage.SERVING:
            log.warning("group: not connected; could not send %s", kind)
            return
        try:
            self._write(self._session.seal_encoded(data))
        except OSError as e:  # the reading side notices the loss and acts on it
            log.warning("group: could not send %s: %s", kind, e)

    def _heartbeat(self) -> bytes:
        """This epoch's heartbeat, encoded once (each is sealed with its own sequence number)."""
        if self._hb is None or self._hb[0] != self.epoch:
            self._hb = (self.epoch, wire.encode({"t": "hb", "attempt": self.attempt, "epoch": self.epoch}))
        return self._hb[1]

    def _write(self, data: bytes) -> None:
        sock = self._sock
        if not self._out:
            try:
                data = data[sock.send(data):]
            except BlockingIOError:
                pass
            if not data:
                return
            self._reactor.modify(sock, READ | WRITE, self._on_ready)
        self._out += data

    def _set_timer(self, when: float, fn, *args) -> None:
        if self._timer is None:
            self._timer = self._reactor.call_at(when, fn, *args)
        else:
            self._reactor.move(self._timer, when, fn, *args)

    def _close_socket(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        sock, self._sock = self._sock, None
        self._session, self._stage = None, None
        self._out.clear()
        if sock is not None:
            self._reactor.unregister(sock)
            sock.close()

    def _attempt(self) -> None:
        """One try to connect: turned away (slots full, not yet verifiable) or lost before the start,
        the member tries again after a growing pause, never at once (two clients claiming one rank
        would swap)."""
        if self._closing:
            return
        try:
            self._open()
        except ConfigError as e:
            with self._cond:
                self._config_error = e
                self._refused = str(e)
                self._cond.notify_all()
        except (OSError, LookupError) as e:
            self._close_socket()
            self._failed(e)

    def _open(self) -> None:
        left = max(0.05, min(self.connect_timeout, self._join_deadline - time.monotonic()))
        host, port = self.server
        if self._resolve is not None:
            if self._address is None:
                self._address = self._resolve(host)  # LookupError: not there yet, retried
                self._address_at = time.monotonic()
                if self._refused_address is not None:  # asked again after refusals: the same answer?
                    same = self._address == self._refused_address
                    self._keep_refused = min(KEEP_REFUSED_MAX, self._keep_refused * 2) if same else KEEP_REFUSED_ADDRESS
                    self._refused_address = None
            host = self._address
        family, target = self._target(host, port)
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.source:
                # The pod's own address as the source (see __init__).
                try:
                    sock.bind((self.source, 0))
                except OSError as e:
                    if e.errno not in (errno.EADDRNOTAVAIL, errno.EINVAL):
                        raise
                    log.warning("group: cannot connect from this pod's address %s (%s); letting the system "
                                "choose", self.source, e.strerror)
                    self.source = None
            err = sock.connect_ex(target)
            if err not in (0, errno.EINPROGRESS):
                raise self._connect_failed(err)
        except BaseException:
            sock.close()
            raise
        self._sock, self._stage = sock, _Stage.CONNECT
        self._frames = wire.FrameBuffer(wire.MAX_HANDSHAKE_FRAME)
        self._hello_b = wire.encode({"t": "hello", "v": wire.VERSION, "attempt": self.attempt, "epoch": self.epoch,
                                     "rank": self.me.rank, "pod": self.me.pod, "nonce": wire.nonce()})
        hello = wire.frame(self._hello_b)
        # Often (always on one host) the connection is up by the time connect() returns: the hello
        # goes at once and the socket is watched for reading only.  Still connecting, send() says
        # so (EAGAIN) and the hello waits for the socket to be writable (the CONNECT stage).
        try:
            sent = sock.send(hello)
        except BlockingIOError:
            self._reactor.register(sock, WRITE, self._on_ready)
            self._set_timer(time.monotonic() + left, self._timed_out, left)
            return
        except OSError as e:  # the connection failed already (refused)
            raise self._connect_failed(e.errno) from None
        self._out += hello[sent:]
        self._reactor.register(sock, READ | WRITE if self._out else READ, self._on_ready)
        self._connected()

    def _target(self, host: str, port: int) -> tuple[int, tuple]:
        """Where to connect: an address (the usual case: the wait's or resolve()'s answer) is
        parsed once and kept; a name is asked of the system's resolver on every try."""
        if self._numeric is None or self._numeric[0] != (host, port):
            try:
                socket.inet_pton(socket.AF_INET, host)  # the usual case, without getaddrinfo's layers
                self._numeric = ((host, port), (socket.AF_INET, (host, port)))
            except OSError:
                try:
                    family, _, _, _, target = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                 flags=socket.AI_NUMERICHOST)[0]
                    self._numeric = ((host, port), (family, target))
                except socket.gaierror:  # a name
                    self._numeric = ((host, port), None)
        if self._numeric[1] is not None:
            return self._numeric[1]
        family, _, _, _, target = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        return family, target

    def _connect_failed(self, err: int) -> OSError:
        """The error of a connect that failed (ECONNREFUSED: a ConnectionRefusedError).  The server's pod
        may have a new address, so its name is asked again -- but not after a refusal within
        KEEP_REFUSED_ADDRESS of the lookup (doubled each time DNS gave the same address back):
        nothing listens there yet, its wrapper is starting."""
        e = OSError(err, os.strerror(err))
        refused = admission.not_listening(e)
        if not (refused and time.monotonic() - self._address_at < self._keep_refused):
            self._refused_address = self._address if refused else None
            self._address = None
        return e

    def _timed_out(self, after: float) -> None:
        self._broken(TimeoutError(f"timed out after {after:g} s in the {self._stage.value} stage"))

    def _on_ready(self, mask: int) -> None:
        try:
            if self._stage is _Stage.CONNECT:
                err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise self._connect_failed(err)
                self._reactor.modify(self._sock, READ, self._on_ready)
                self._connected()
                self._write(wire.frame(self._hello_b))
                return
            if mask & WRITE and self._out:
                del self._out[:self._sock.send(self._out)]
                if not self._out:
                    self._reactor.modify(self._sock, READ, self._on_ready)
            if mask & READ:
                self._read()
        except BlockingIOError:
            pass
        except (OSError, LookupError, wire.ProtocolError, _Refused) as e:
            self._broken(e)

    def _connected(self) -> None:
        """Connected, the hello sent (or being sent): wait for the server's challenge and proof."""
        self._stage = _Stage.CHALLENGE
        self._keep_refused, self._refused_address = KEEP_REFUSED_ADDRESS, None  # it listens now
        left = max(0.05, min(self.connect_timeout, self._join_deadline - time.monotonic()))
        # As long as the server may take (its handshake deadline, admission.Limits): a member
        # that gave up on a welcome already sent would be counted joined and then lost.
        wait = max(self.deadline, left, admission.Limits.deadline)
        self._set_timer(time.monotonic() + wait, self._timed_out, wait)

    def _read(self) -> None:
        data = self._sock.recv(65536)
        if not data:
            raise ConnectionError("the coordinator closed the connection"
                                  + ("" if self._stage is _Stage.SERVING else " during the handshake"))
        if self._stage is _Stage.SERVING:
            # Every frame this read holds at once (the handshake's go one by one: the frame
            # limit changes after the proof).
            self._last_rx = time.monotonic()
            session = self._session
            for body in self._frames.feed(data):
                if self._sock is None:
                    return
                self._handle(session.open(body))
            return
        self._frames.add(data)
        while self._sock is not None and (body := self._frames.pop()) is not None:
            self._frame(body)

    def _frame(self, body: bytes) -> None:
        stage = self._stage
        if stage is _Stage.SERVING:
            self._handle(self._session.open(body))
        elif stage is _Stage.CHALLENGE:
            wire.check_nonce(wire.expect(body, "challenge")["nonce"])
            self._challenge_b, self._stage = body, _Stage.PROOF
        elif stage is _Stage.PROOF:
            proof = wire.expect(body, "proof")
            keys = wire.handshake_keys(self._key, self._hello_b, self._challenge_b)
            if not wire.proof_ok(proof["proof"], keys.server_proof):
                raise wire.ProtocolError("the coordinator could not prove it holds the group token "
                                         "(a different token on one side, or not our coordinator)")
            self._write(wire.frame(wire.encode({"t": "proof", "proof": keys.member_proof})))
            self._session = wire.member_session(keys.session_key)
            self._stage = _Stage.WELCOME
            self._frames.limit = wire.MAX_FRAME
            # The server decides on the claim once it has read this proof (after its pod's lookup,
            # server.LOOKUP_WAIT at most), however much of its handshake deadline it spent waiting
            # for the CPU before: the wait for the welcome starts now.
            wait = max(self.deadline, admission.Limits.deadline)
            self._set_timer(time.monotonic() + wait, self._timed_out, wait)
        elif stage is _Stage.WELCOME:
            first = self._session.open(body)
            if first["t"] == "refused":
                raise _Refused(f"the coordinator refused {self.me}: {first['reason']}", first["retry"])
            if first["t"] != "welcome" or first["attempt"] != self.attempt:
                raise wire.ProtocolError(f"expected a welcome for attempt {self.attempt}, got {first['t']}")
            self._welcomed(first["epoch"])
        else:
            raise wire.ProtocolError(f"a frame in the {stage} stage")

    def _welcomed(self, epoch: int) -> None:
        self._stage = _Stage.SERVING
        now = time.monotonic()
        self._last_rx, self._next_hb = now, now + self.heartbeat
        self._set_timer(self._next_hb, self._tick)
        with self._cond:
            self.epoch = epoch
            self.phase = MemberPhase.WAITING
            self._cond.notify_all()
        log.debug("group: %s joined the coordinator at %s:%d", self.me, *self.server)
        self._phase_changed()

    def _tick(self) -> None:
        """Heartbeat, and judge the coordinator's silence."""
        now = time.monotonic()
        if now - self._last_rx > self.deadline:
            # A thread that waited long for the CPU (a loaded node) wakes past the deadline with
            # the coordinator's frames already queued: read them before judging.
            try:
                self._read()
            except BlockingIOError:
                pass
            except (OSError, wire.ProtocolError) as e:
                self._broken(e)
                return
            if self._sock is None:
                return
            now = time.monotonic()
            if now - self._last_rx > self.deadline:
                self._broken(TimeoutError(f"no word from the coordinator for more than {self.deadline:g} s"))
                return
        if now >= self._next_hb:
            self._send_encoded(self._heartbeat(), "hb")
            self._next_hb = now + self.heartbeat
        if self._sock is not None:
            self._set_timer(min(self._next_hb, self._last_rx + self.deadline), self._tick)

    def _broken(self, e: BaseException) -> None:
        """This connection is over: a failed try before the welcome, else the coordinator lost."""
        serving = self._stage is _Stage.SERVING
        self._close_socket()
        if serving:
            self._lost(str(e) or e.__class__.__name__)
        else:
            self._failed(e)

    def _failed(self, e: BaseException) -> None:
        self._last_error = str(e) or e.__class__.__name__
        if isinstance(e, _Refused) and not e.retry:
            with self._cond:
                self._refused = str(e)
                self._cond.notify_all()
            return
        if self._closing or time.monotonic() >= self._join_deadline:
            return  # join() reports the last error
        self._retry(e)

    def _retry(self, error: BaseException | None = None) -> None:
        self._set_timer(time.monotonic() + self._backoff.delay(self._join_deadline, error), self._attempt)

    def _lost(self, why: str) -> None:
        if self._closing:
            return
        with self._cond:
            waiting = self.phase is MemberPhase.WAITING
            if waiting:
                self.phase = MemberPhase.CONNECTING
        if waiting and time.monotonic() < self._join_deadline:
            log.warning("group: lost the coordinator before the start (%s); reconnecting", why)
            self._retry()
            return
        host, port = self.server
        self._abort(Failure(None, f"{host}:{port}", None, f"lost the group coordinator: {why}"))

    def _handle(self, msg: dict) -> None:
        kind = msg["t"]
        if msg["attempt"] != self.attempt:
            log.warning("group: dropped %s of attempt %d (this is attempt %d)", kind, msg["attempt"], self.attempt)
            return
        if kind == "hb":
            if "missing" in msg and isinstance(msg.get("n_missing"), int):
                raw = msg["missing"]
                if raw != self._missing_raw:  # most heartbeats repeat the last one's list
                    try:
                        self._missing = [MemberId(int(r), str(p)) for r, p in raw]
                    except (TypeError, ValueError):
                        raise wire.ProtocolError("heartbeat with a malformed missing list") from None
                    self._missing_raw = raw
                self._n_missing = msg["n_missing"]
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
                self._phase_changed()
            else:
                log.warning("group: dropped a restart to epoch %d (at epoch %d, %s)", msg["epoch"], epoch, phase.value)
            return
        if msg["epoch"] != epoch:
            log.warning("group: dropped %s of epoch %d (this is epoch %d)", kind, msg["epoch"], epoch)
            return
        if kind == "start":
            if phase is MemberPhase.WAITING:
                self.names_resolved = msg.get("dns") == "all"
                self.started = True
                self._set_phase(MemberPhase.RUNNING)
        elif kind == "abort":
            self._abort(Failure.from_message(msg))
        elif kind == "complete":
            if phase in (MemberPhase.RUNNING, MemberPhase.FINISHING):
                self._set_phase(MemberPhase.COMPLETE)
        else:
            raise wire.ProtocolError(f"the coordinator may not send {kind} now")
