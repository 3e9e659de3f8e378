"""The authenticated channel between the MPI launcher (and its agent) and each worker.

Reuses the group channel's wire primitives (jobset_runtime/group/wire.py):
length-prefixed, size-limited JSON frames; a challenge-response handshake in
which both sides prove they hold the token without sending it; then every
frame tagged with a per-direction, per-sequence HMAC under a session key.

The key is derived from the MPI token with its own label, so a proof or frame
made for the group channel never passes here even when one Secret holds both.

The worker listens; the launcher (role `watch`) and the remote-start agent
(role `exec`) connect.  Messages after the handshake:

    watch: launcher -> worker  hb {}                   every HEARTBEAT_S
                               finish {code, cause}    the launcher is done
           worker -> launcher  stopping {cause}        the worker is being stopped (SIGTERM)
                               daemon {pod, name, pid, state, code, signal}
                                                       a daemon it started: started | exited | stopped
    exec:  agent -> worker     exec {argv, env}        start an MPI daemon (no shell)
           worker -> agent     started {pid} | refused {cause}
                               out {fd, data}...       the daemon's stdout/stderr
                               exit {code}
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import time

from ..addresses import join_host_port
from ..group import wire
from ..group.wire import ProtocolError

VERSION = 1
HEARTBEAT_S = 1.0
OUT_CHUNK = 8 * 1024  # bytes of output per frame: JSON escaping stays under wire.MAX_FRAME
_KEY_LABEL = b"jobset-runtime-mpi/1 channel key\0"
ROLES = ("watch", "exec")

_HANDSHAKE = {
    "hello": {"v": int, "role": str, "pod": str, "nonce": str},
    "challenge": {"v": int, "pod": str, "nonce": str},
    "proof": {"proof": str},
}
_SEALED = {
    "hb": {},
    "finish": {"code": int, "cause": str},
    "stopping": {"cause": str},  # worker -> launcher: the worker got SIGTERM and is leaving
    # worker -> launcher: one MPI daemon's start or end (worker.DaemonState), while the run is live
    "daemon": {"pod": str, "name": str, "pid": int, "state": str, "code": int, "signal": int},
    "exec": {"argv": list, "env": list},
    "started": {"pid": int},
    "refused": {"cause": str},
    "out": {"fd": int, "data": str},
    "exit": {"code": int},
}


def derive_key(token: bytes) -> bytes:
    return hmac.new(token, _KEY_LABEL, hashlib.sha256).digest()


class Closed(ProtocolError):
    """The peer closed the connection in the middle of a frame."""


class Probe(Closed):
    """The peer closed before saying anything: a port check or readiness probe, not an error."""


class NotAdmitted(ProtocolError):
    """The worker closed the connection before proving it holds the token: it turned us away
    (its handshake slots were taken, admission.py) or is restarting.  Retry; not a wrong token."""


class Channel:
    """One authenticated connection; blocking, for one thread at a time per direction."""

    def __init__(self, sock: socket.socket, session: wire.Session, peer: str):
        self.sock, self.session, self.peer = sock, session, peer

    def send(self, msg: dict) -> None:
        self.sock.sendall(self.session.seal(msg))

    def recv(self, timeout: float | None = None) -> dict | None:
        """The next message, or None when the peer closed the connection cleanly."""
        self.sock.settimeout(timeout)
        header = _recv_exact(self.sock, wire.HEADER.size, eof_ok=True)
        if header is None:
            return None
        body = _recv_exact(self.sock, wire.body_length(header, wire.MAX_FRAME))
        return self.session.open(body)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _recv_exact(sock: socket.socket, n: int, eof_ok: bool = False, deadline: float | None = None) -> bytes | None:
    """n bytes; with `deadline` (time.monotonic()), all of them by then, however slowly they trickle in."""
    data = bytearray()
    while len(data) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("handshake deadline passed")
            sock.settimeout(left)
        chunk = sock.recv(n - len(data))
        if not chunk:
            if eof_ok and not data:
                return None
            raise Closed("connection closed mid-frame")
        data += chunk
    return bytes(data)


def _handshake_frame(sock: socket.socket, kind: str, deadline: float, first: bool = False) -> tuple[bytes, dict]:
    header = _recv_exact(sock, wire.HEADER.size, eof_ok=first, deadline=deadline)
    if header is None:
        raise Probe("closed before the handshake")
    body = _recv_exact(sock, wire.body_length(header, wire.MAX_HANDSHAKE_FRAME), deadline=deadline)
    msg = wire.decode(body, _HANDSHAKE)
    if msg["t"] != kind:
        raise ProtocolError(f"expected {kind}, got {msg['t']}")
    return body, msg


def connect(host: str, port: int, key: bytes, *, role: str, pod: str, timeout: float = 10.0) -> Channel:
    """Connect and prove the token (client side); ProtocolError/OSError on failure."""
    deadline = time.monotonic() + timeout
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        hello = wire.encode({"t": "hello", "v": VERSION, "role": role, "pod": pod, "nonce": wire.nonce()})
        sock.sendall(wire.frame(hello))
        try:
            challenge, cmsg = _handshake_frame(sock, "challenge", deadline, first=True)
            wire.check_nonce(cmsg["nonce"])
            _, proof = _handshake_frame(sock, "proof", deadline)
        except (ConnectionError, Closed) as e:
            raise NotAdmitted(f"{join_host_port(host, port)} closed the connection before proving it holds "
                              f"the MPI token ({e})") from None
        if not wire.proof_ok(proof["proof"], wire.server_proof(key, hello, challenge)):
            raise ProtocolError(f"{join_host_port(host, port)} could not prove it holds the MPI token "
                                "(a different JobSet's worker, or a different Secret)")
        sock.sendall(wire.frame(wire.encode({"t": "proof", "proof": wire.member_proof(key, hello, challenge)})))
        session = wire.Session(wire.session_key(key, hello, challenge), send_dir=wire.TO_SERVER, recv_dir=wire.TO_MEMBER,
                               schemas=_SEALED)
        sock.settimeout(None)
        return Channel(sock, session, cmsg["pod"])
    except BaseException:
        sock.close()
        raise


def connect_until(host: str, port: int, key: bytes, *, role: str, pod: str, deadline: float) -> Channel:
    """connect(), and again with backoff (admission.retrying) while the worker turns the
    connection away or cannot be reached, until `deadline` (time.monotonic()); then the last
    error.  A worker that answers but cannot prove the token is not retried."""
    from .. import admission

    for attempt in admission.retrying(deadline, (NotAdmitted, OSError)):
        with attempt:
            return connect(host, port, key, role=role, pod=pod,
                           timeout=max(0.5, min(10.0, deadline - time.monotonic())))
    raise AssertionError("unreachable")


def accept(sock: socket.socket, key: bytes, *, pod: str, timeout: float = 10.0) -> tuple[Channel, dict]:
    """Server side of the handshake on an accepted socket; returns (channel, hello).

    Nothing the peer sends is acted on until it has proved the token.
    """
    deadline = time.monotonic() + timeout
    sock.settimeout(timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    hello, hmsg = _handshake_frame(sock, "hello", deadline, first=True)
    wire.check_nonce(hmsg["nonce"])
    if hmsg["v"] != VERSION or hmsg["role"] not in ROLES:
        raise ProtocolError(f"unsupported hello (v={hmsg['v']}, role={hmsg['role'][:20]!r})")
    challenge = wire.encode({"t": "challenge", "v": VERSION, "pod": pod, "nonce": wire.nonce()})
    sock.sendall(wire.frame(challenge))
    sock.sendall(wire.frame(wire.encode({"t": "proof", "proof": wire.server_proof(key, hello, challenge)})))
    _, proof = _handshake_frame(sock, "proof", deadline)
    if not wire.proof_ok(proof["proof"], wire.member_proof(key, hello, challenge)):
        raise ProtocolError("the peer could not prove it holds the MPI token")
    session = wire.Session(wire.session_key(key, hello, challenge), send_dir=wire.TO_MEMBER, recv_dir=wire.TO_SERVER,
                           schemas=_SEALED)
    sock.settimeout(None)
    return Channel(sock, session, hmsg["pod"]), hmsg



