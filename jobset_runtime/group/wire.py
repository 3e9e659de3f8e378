"""The group channel's wire format: frames, message schemas, handshake proofs, sealed sessions.

Pure functions and small values only; sockets live in server.py and member.py.

Frame: a 4-byte big-endian length, then that many bytes.  Before authentication the
body is a JSON object (at most MAX_HANDSHAKE_FRAME bytes); after it, the body is a
32-byte HMAC-SHA256 tag followed by the JSON object (at most MAX_FRAME bytes).  JSON is
parsed as data and checked against SCHEMAS; anything else is a ProtocolError, on which
the reader closes that one connection.

Handshake (both sides prove they hold the token; the token never travels):
  member -> server  hello      {v, attempt, epoch, rank, pod, nonce}
  server -> member  challenge  {v, attempt, epoch, nonce}
  server -> member  proof      HMAC(token, "server" | H(hello) | H(challenge))
  member -> server  proof      HMAC(token, "member" | H(hello) | H(challenge))
where H is SHA-256 of the exact bytes sent and both nonces are 32 bytes from os.urandom.
The session key is HMAC(token, "session" | H(hello) | H(challenge)); every later frame is
tagged HMAC(key, direction | seq | json) with a per-direction counter, so a frame cannot
be replayed, reordered, reflected or carried into another connection.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import struct

from .. import contract

log = logging.getLogger("jobset_runtime.group")

VERSION = 1
NONCE_LEN = 32
TAG_LEN = 32
MAX_FRAME = 64 * 1024
MAX_HANDSHAKE_FRAME = 4 * 1024
MAX_CAUSE = 1024  # characters of a failure's cause kept on the wire
HEADER = struct.Struct(">I")
_DIR_SEQ = struct.Struct(">cQ")  # a sealed frame's direction byte and sequence number, as tagged

# Labels keep the three HMAC uses apart, so a proof can never pass for another.
_SERVER_LABEL = b"jobset-runtime-group/1 server proof\0"
_MEMBER_LABEL = b"jobset-runtime-group/1 member proof\0"
_SESSION_LABEL = b"jobset-runtime-group/1 session key\0"
TO_MEMBER = b"S"  # direction byte of frames the server sends
TO_SERVER = b"M"  # direction byte of frames a member sends


_compare_digest = hmac.compare_digest


class ProtocolError(Exception):
    """The peer broke the protocol: close that connection, leave the group alone."""


# --- framing ---------------------------------------------------------------------

def frame(body: bytes) -> bytes:
    if not 0 < len(body) <= MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes (limit {MAX_FRAME})")
    return HEADER.pack(len(body)) + body


def body_length(header: bytes, limit: int) -> int:
    """The announced body length, refused before a byte of the body is read."""
    (n,) = HEADER.unpack(header)
    if not 0 < n <= limit:
        raise ProtocolError(f"frame of {n} bytes announced (limit {limit})")
    return n


class FrameBuffer:
    """Splits a byte stream into frame bodies, refusing oversize ones from the header alone.

    `limit` may change between two pop()s (the handshake's frames are smaller than a session's)."""

    def __init__(self, limit: int = MAX_FRAME):
        self.limit = limit
        self._buf = bytearray()

    def add(self, data: bytes) -> None:
        self._buf += data

    def pop(self) -> bytes | None:
        """The next whole frame body, or None until more bytes arrive."""
        buf = self._buf
        if len(buf) < HEADER.size:
            return None
        n = _length(buf, 0, self.limit)
        end = HEADER.size + n
        if len(buf) < end:
            return None
        with memoryview(buf) as view:  # one copy of the body, not two
            body = bytes(view[HEADER.size:end])
        del buf[:end]
        return body

    def feed(self, data: bytes) -> list[bytes]:
        """Every whole frame body in the buffer and `data`.  When the buffer is empty (the usual
        case: a read holds whole frames) they are cut from `data` itself, the rest kept."""
        if self._buf:
            self.add(data)
            bodies = []
            while (body := self.pop()) is not None:
                bodies.append(body)
            return bodies
        bodies, at, size, limit = [], 0, len(data), self.limit
        if size > HEADER.size:
            (n,) = HEADER.unpack_from(data)
            if 0 < n <= limit and HEADER.size + n == size:  # exactly one frame: the usual read
                return [data[HEADER.size:]]
        with memoryview(data) as view:
            while size - at >= HEADER.size:
                n = _length(data, at, limit)
                end = at + HEADER.size + n
                if end > size:
                    break
                bodies.append(bytes(view[at + HEADER.size:end]))
                at = end
        if at < size:
            self._buf += data[at:]
        return bodies


def _length(buf, at: int, limit: int) -> int:
    (n,) = HEADER.unpack_from(buf, at)
    if not 0 < n <= limit:
        raise ProtocolError(f"frame of {n} bytes announced (limit {limit})")
    return n


# --- messages ----------------------------------------------------------------------

_SCOPED = {"attempt": int, "epoch": int}
# Every message type and its required fields; extra fields are ignored.
SCHEMAS: dict[str, dict[str, type | tuple]] = {
    "hello": {"v": int, **_SCOPED, "rank": int, "pod": str, "nonce": str},
    "challenge": {"v": int, **_SCOPED, "nonce": str},
    "proof": {"proof": str},
    # server -> member, sealed
    "welcome": {**_SCOPED},
    "refused": {**_SCOPED, "reason": str, "retry": bool},
    "hb": {**_SCOPED},  # in the waiting phase also missing=[[rank, pod], ...], n_missing
    "start": {**_SCOPED},  # also dns="all" when the servers checked every pod's name (docs/peers.md)
    "abort": {**_SCOPED, "rank": (int, type(None)), "pod": str, "code": (int, type(None)), "cause": str},
    "complete": {**_SCOPED},
    "restart": {**_SCOPED},
    # member -> server, sealed
    "fail": {**_SCOPED, "code": (int, type(None)), "cause": str},
    "done": {**_SCOPED},
    "barrier": {**_SCOPED},
}


# One encoder and one decoder for every message: json.dumps() with arguments builds an encoder
# per call, and json.loads() goes through two layers before the C scanner.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)
_DECODER = json.JSONDecoder()
_scan = _DECODER.scan_once  # one JSON value at a position: (value, end)


def encode(msg: dict) -> bytes:
    return _ENCODER.encode(msg).encode()


def typed(value, want) -> bool:
    wants = want if isinstance(want, tuple) else (want,)
    # bool is an int in Python; on the wire it is not.
    if isinstance(value, bool) and bool not in wants:
        return False
    return isinstance(value, wants)


def compile_schemas(schemas: dict) -> dict[str, tuple[tuple[str, frozenset], ...]]:
    """Each message type's required fields with the exact types a value may have.  JSON parses only
    to dict, list, str, int, float, bool and None, never to a subclass, so for parsed data
    `type(value) in types` says what typed() says (bool, not an int on the wire, is its own type)."""
    return {kind: tuple((name, frozenset(want if isinstance(want, tuple) else (want,)))
                        for name, want in schema.items())
            for kind, schema in schemas.items()}


_SCHEMA_CHECKS = compile_schemas(SCHEMAS)
_compiled: dict[int, tuple[dict, dict]] = {}  # id(schemas) -> (schemas, compiled): fixed tables, compiled once
_ABSENT = object()  # a missing field: of no type any schema names


def _checks(schemas: dict) -> dict:
    hit = _compiled.get(id(schemas))
    if hit is None or hit[0] is not schemas:
        hit = _compiled[id(schemas)] = (schemas, compile_schemas(schemas))
    return hit[1]


def parse(text: str):
    """JSON text as data, as json.loads parses it: a message (no whitespace around it) straight
    through the C scanner; anything else through the whole decoder, which accepts the same
    whitespace and raises the same errors as json.loads."""
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        end = -1
    if end == len(text):
        return value
    return _DECODER.decode(text)


def decode(body: bytes, schemas: dict | None = None) -> dict:
    """Parse a JSON message as data and check it against its schema (default: the group's)."""
    try:
        msg = parse(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError(f"not a JSON message: {e.__class__.__name__}") from None
    if type(msg) is not dict or type(kind := msg.get("t")) is not str:
        raise ProtocolError("message is not an object with a string 't'")
    fields = (_SCHEMA_CHECKS if schemas is None else _checks(schemas)).get(kind)
    if fields is None:
        raise ProtocolError(f"unknown message type {kind[:40]!r}")
    get = msg.get
    for name, types in fields:
        if type(get(name, _ABSENT)) not in types:
            raise ProtocolError(f"{kind} message lacks a valid {name!r}")
    return msg


def expect(body: bytes, kind: str) -> dict:
    msg = decode(body)
    if msg["t"] != kind:
        raise ProtocolError(f"expected {kind}, got {msg['t']}")
    return msg


# --- handshake ---------------------------------------------------------------------

def nonce() -> str:
    return os.urandom(NONCE_LEN).hex()


def check_nonce(value: str) -> None:
    try:
        ok = len(bytes.fromhex(value)) == NONCE_LEN
    except ValueError:
        ok = False
    if not ok:
        raise ProtocolError("nonce is not 32 bytes of hex")


def transcript(hello: bytes, challenge: bytes) -> bytes:
    """H(hello) | H(challenge): what the proofs and the session key are computed over."""
    h = hashlib.sha256
    return h(hello).digest() + h(challenge).digest()


def _mac(key: bytes, label: bytes, hello: bytes, challenge: bytes) -> bytes:
    return hmac.digest(key, label + transcript(hello, challenge), "sha256")


def server_proof(token: bytes, hello: bytes, challenge: bytes) -> str:
    return _mac(token, _SERVER_LABEL, hello, challenge).hex()


def member_proof(token: bytes, hello: bytes, challenge: bytes) -> str:
    return _mac(token, _MEMBER_LABEL, hello, challenge).hex()


def proof_ok(got: str, want: str) -> bool:
    return hmac.compare_digest(got.encode("ascii", "replace"), want.encode("ascii"))


def session_key(token: bytes, hello: bytes, challenge: bytes) -> bytes:
    return _mac(token, _SESSION_LABEL, hello, challenge)


class HandshakeKeys:
    """The two proofs and the session key of one handshake (a plain class: typing.NamedTuple would
    put the typing module on the wrapper's start path)."""

    __slots__ = ("member_proof", "server_proof", "session_key")

    def __init__(self, server_proof: str, member_proof: str, session_key: bytes):
        self.server_proof, self.member_proof, self.session_key = server_proof, member_proof, session_key


def handshake_keys(token: bytes, hello: bytes, challenge: bytes) -> HandshakeKeys:
    """server_proof(), member_proof() and session_key() of one handshake, its transcript hashed once."""
    t = transcript(hello, challenge)
    return HandshakeKeys(hmac.digest(token, _SERVER_LABEL + t, "sha256").hex(),
                         hmac.digest(token, _MEMBER_LABEL + t, "sha256").hex(),
                         hmac.digest(token, _SESSION_LABEL + t, "sha256"))


class Session:
    """Seals outgoing and opens incoming frames of one authenticated connection."""

    def __init__(self, key: bytes, *, send_dir: bytes, recv_dir: bytes, schemas: dict | None = None):
        # The key's HMAC state is set up once; each tag starts from a copy of it.  Where OpenSSL
        # computes it, hmac.HMAC wraps a C object (_hmac) that copies without the wrapper's Python.
        keyed = hmac.new(key, digestmod=hashlib.sha256)
        self._keyed = getattr(keyed, "_hmac", None) or keyed
        self._schemas = schemas
        self._send_dir, self._recv_dir = send_dir, recv_dir
        self._send_seq = 0
        self._recv_seq = 0

    # The tag, HMAC(key, direction | seq | json), is computed inline in seal_encoded() and open():
    # both run once per frame on each side.

    def seal(self, msg: dict) -> bytes:
        return self.seal_encoded(encode(msg))

    def seal_encoded(self, data: bytes) -> bytes:
        """seal() of a message already encode()d: a broadcast encodes its message once and
        seals it for each connection with that connection's key and sequence number."""
        n = TAG_LEN + len(data)
        if n > MAX_FRAME:
            raise ProtocolError(f"frame of {n} bytes (limit {MAX_FRAME})")
        mac = self._keyed.copy()
        mac.update(_DIR_SEQ.pack(self._send_dir, self._send_seq))
        mac.update(data)
        self._send_seq += 1
        return b"".join((HEADER.pack(n), mac.digest(), data))

    def open(self, body: bytes) -> dict:
        if len(body) <= TAG_LEN:
            raise ProtocolError("sealed frame too short")
        data = body[TAG_LEN:]
        mac = self._keyed.copy()
        mac.update(_DIR_SEQ.pack(self._recv_dir, self._recv_seq))
        mac.update(data)
        if not _compare_digest(body[:TAG_LEN], mac.digest()):
            raise ProtocolError("bad frame HMAC (forged, replayed or out of order)")
        self._recv_seq += 1
        return decode(data, self._schemas)


def member_session(key: bytes) -> Session:
    return Session(key, send_dir=TO_SERVER, recv_dir=TO_MEMBER)


def server_session(key: bytes) -> Session:
    return Session(key, send_dir=TO_MEMBER, recv_dir=TO_SERVER)


def check_auth(token: bytes | None, insecure: bool) -> bytes:
    """The HMAC key: the token, or b"" when the caller explicitly asked for no authentication."""
    if token:
        return token
    if insecure:
        log.warning("group: no token; the group channel runs WITHOUT authentication (--insecure)")
        return b""
    from ..errors import ConfigError

    raise ConfigError(
        f"the group channel needs a token: mount the group Secret at {contract.GROUP_TOKEN_FILE} "
        f"(or point {contract.GROUP_TOKEN_FILE_ENV} at it), or pass --insecure to run it without authentication")


def read_token(path, what: str = "group token",
               fix: str = "mount the group Secret there, or pass --insecure to run the group channel "
                          "without authentication") -> bytes:
    """A shared token from a file mounted from a Secret; surrounding whitespace is not part of it."""
    from ..errors import ConfigError

    try:
        with open(path, "rb") as f:
            token = f.read().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the {what} {path}: {e.strerror}; {fix}") from None
    if len(token) < 16:
        raise ConfigError(f"the {what} in {path} is {len(token)} bytes; use at least 16 random bytes")
    return token
