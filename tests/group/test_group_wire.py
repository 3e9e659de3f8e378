"""The wire format, as pure functions: frames, schemas, proofs and sealed sessions."""

import json
import os

import pytest

from jobset_runtime.errors import ConfigError
from jobset_runtime.group import wire
from jobset_runtime.group.wire import ProtocolError

KEY = os.urandom(32)


def test_frames_split_and_joined_across_reads():
    stream = b"".join(wire.frame(wire.encode({"t": "hb", "attempt": 0, "epoch": i})) for i in range(3))
    buf = wire.FrameBuffer()
    bodies = []
    for i in range(0, len(stream), 7):
        bodies += buf.feed(stream[i : i + 7])
    assert [wire.decode(b)["epoch"] for b in bodies] == [0, 1, 2]


def test_whole_frames_and_a_partial_one_in_one_read():
    frames = [wire.frame(wire.encode({"t": "hb", "attempt": 0, "epoch": i})) for i in range(3)]
    buf = wire.FrameBuffer()
    assert [wire.decode(b)["epoch"] for b in buf.feed(frames[0] + frames[1] + frames[2][:5])] == [0, 1]
    assert buf.feed(b"") == []
    assert [wire.decode(b)["epoch"] for b in buf.feed(frames[2][5:])] == [2]
    with pytest.raises(ProtocolError, match="limit"):
        wire.FrameBuffer(limit=10).feed(frames[0] + frames[1])


def test_oversize_frame_refused_from_its_header():
    buf = wire.FrameBuffer(limit=wire.MAX_FRAME)
    with pytest.raises(ProtocolError, match="limit"):
        buf.feed(wire.HEADER.pack(wire.MAX_FRAME + 1))
    with pytest.raises(ProtocolError):
        wire.body_length(wire.HEADER.pack(0), 10)
    with pytest.raises(ProtocolError):
        wire.frame(b"x" * (wire.MAX_FRAME + 1))


@pytest.mark.parametrize("body", [
    b"\xff\xfe garbage", b"[1, 2]", b'"hello"', b"{}", b'{"t": 5}', b'{"t": "pickle"}',
    b'{"t": "hb", "attempt": 0}', b'{"t": "hb", "attempt": "0", "epoch": 0}',
    b'{"t": "hb", "attempt": true, "epoch": 0}', b"[" * 50000, b"cos\nsystem\n(S'id'\ntR.",
])
def test_anything_but_a_valid_message_is_a_protocol_error(body):
    with pytest.raises(ProtocolError):
        wire.decode(body)


def test_extra_fields_are_ignored_required_ones_checked():
    msg = wire.decode(b'{"t":"fail","attempt":1,"epoch":2,"code":null,"cause":"x","extra":[1]}')
    assert msg["code"] is None and msg["epoch"] == 2


def pair(key=KEY):
    return wire.member_session(key), wire.server_session(key)


def test_sealed_frames_open_in_order_only_once():
    member, server = pair()
    frames = [member.seal({"t": "hb", "attempt": 0, "epoch": i}) for i in range(3)]
    assert server.open(frames[0][4:])["epoch"] == 0
    with pytest.raises(ProtocolError, match="HMAC"):
        server.open(frames[0][4:])  # replayed
    with pytest.raises(ProtocolError, match="HMAC"):
        server.open(frames[2][4:])  # out of order


def test_a_broadcast_encoded_once_is_sealed_per_connection():
    """seal_encoded() tags HMAC(key, direction | seq | json) like seal(): each connection's copy
    opens only at its own peer, in its own sequence."""
    import hashlib
    import hmac

    keys = [os.urandom(32), os.urandom(32)]
    senders = [wire.server_session(k) for k in keys]
    readers = [wire.member_session(k) for k in keys]
    senders[0].seal({"t": "hb", "attempt": 0, "epoch": 0})  # the first connection is one frame ahead
    data = wire.encode({"t": "complete", "attempt": 0, "epoch": 0})
    sealed = [s.seal_encoded(data) for s in senders]
    assert sealed[0] != sealed[1]
    for seq, key, frame in ((1, keys[0], sealed[0]), (0, keys[1], sealed[1])):
        want = hmac.new(key, wire.TO_MEMBER + seq.to_bytes(8, "big") + data, hashlib.sha256).digest()
        assert frame == wire.HEADER.pack(wire.TAG_LEN + len(data)) + want + data
    assert readers[1].open(sealed[1][4:])["t"] == "complete"
    with pytest.raises(ProtocolError, match="HMAC"):
        wire.member_session(keys[1]).open(sealed[0][4:])
    with pytest.raises(ProtocolError, match="limit"):
        senders[0].seal_encoded(b"x" * wire.MAX_FRAME)


def test_sealed_frame_rejected_when_tampered_reflected_or_from_another_session():
    member, server = pair()
    f = bytearray(member.seal({"t": "done", "attempt": 0, "epoch": 0})[4:])
    f[-3] ^= 1
    with pytest.raises(ProtocolError):
        server.open(bytes(f))
    member2, _ = pair()
    with pytest.raises(ProtocolError):
        member2.open(member.seal({"t": "hb", "attempt": 0, "epoch": 0})[4:])  # reflected to its sender
    _, other = pair(os.urandom(32))
    with pytest.raises(ProtocolError):
        other.open(wire.member_session(KEY).seal({"t": "hb", "attempt": 0, "epoch": 0})[4:])
    with pytest.raises(ProtocolError, match="short"):
        server.open(b"x" * 10)


def test_proofs_bind_token_role_and_transcript():
    hello, challenge = b'{"t":"hello","n":1}', b'{"t":"challenge","n":2}'
    sp = wire.server_proof(b"token-a" * 3, hello, challenge)
    mp = wire.member_proof(b"token-a" * 3, hello, challenge)
    assert sp != mp  # neither side's proof passes for the other's
    assert wire.proof_ok(sp, wire.server_proof(b"token-a" * 3, hello, challenge))
    assert not wire.proof_ok(sp, wire.server_proof(b"token-b" * 3, hello, challenge))
    assert not wire.proof_ok(sp, wire.server_proof(b"token-a" * 3, hello, b'{"t":"challenge","n":3}'))
    assert not wire.proof_ok("\u00e9" * 64, sp)
    assert b"token-a" not in bytes.fromhex(sp)


def test_nonces_are_fresh_and_checked():
    assert wire.nonce() != wire.nonce()
    wire.check_nonce(wire.nonce())
    for bad in ("", "zz" * 32, "ab" * 8):
        with pytest.raises(ProtocolError):
            wire.check_nonce(bad)


def test_read_token(tmp_path):
    (tmp_path / "t").write_bytes(b"  s3cret-s3cret-s3cret \n")
    assert wire.read_token(tmp_path / "t") == b"s3cret-s3cret-s3cret"
    with pytest.raises(ConfigError, match="--insecure"):
        wire.read_token(tmp_path / "missing")
    (tmp_path / "short").write_bytes(b"abc")
    with pytest.raises(ConfigError, match="16"):
        wire.read_token(tmp_path / "short")


# Every JSON type a field can hold, and none at all.
_VALUES = {"int": 3, "zero": 0, "true": True, "false": False, "null": None, "str": "x", "float": 1.5,
           "list": [1], "object": {"a": 1}, "absent": KeyError}


@pytest.mark.parametrize("kind", sorted(wire.SCHEMAS))
def test_schema_checks_accept_exactly_what_typed_accepts_with_the_same_error(kind):
    """decode() checks types by exact JSON type: for every field of every message and every JSON
    value, it accepts what typed() accepts and names the first field that typed() refuses."""
    schema = wire.SCHEMAS[kind]
    good = {"int": 1, "str": "s", "bool": True}
    base = {"t": kind}
    for name, want in schema.items():
        first = want[0] if isinstance(want, tuple) else want
        base[name] = good[first.__name__]
    assert wire.decode(json.dumps(base).encode()) == base
    for name, want in schema.items():
        for label, value in _VALUES.items():
            msg = dict(base)
            if value is KeyError:
                del msg[name]
                ok = False
            else:
                msg[name] = value
                ok = wire.typed(value, want)
            body = json.dumps(msg).encode()
            if ok:
                assert wire.decode(body)[name] == value, (kind, name, label)
            else:
                with pytest.raises(ProtocolError, match=f"^{kind} message lacks a valid '{name}'$"):
                    wire.decode(body)


def test_json_is_parsed_as_json_loads_parses_it():
    """Whitespace around a message is accepted, as json.loads accepts it; anything after it is not."""
    msg = {"t": "hb", "attempt": 0, "epoch": 4}
    for body in (b' {"t":"hb","attempt":0,"epoch":4}', b'{"t": "hb", "attempt": 0, "epoch": 4}\n',
                 b'\t{"t":"hb",\n"attempt":0,"epoch":4} \r\n'):
        assert wire.decode(body) == json.loads(body) == msg
    for body in (b'{"t":"hb","attempt":0,"epoch":4} x', b'{"t":"hb","attempt":0,"epoch":4}{}',
                 b'{"t":"hb","attempt":0,"epoch":4', b"", b" ", b"\xef\xbb\xbf{}", b'{"t":"hb","attempt":0,"epoch":NaN}'):
        with pytest.raises(ProtocolError):
            wire.decode(body)


def test_other_schema_tables_are_checked_by_their_own_rules():
    """decode(body, schemas) for another protocol's table (the MPI channel's): compiled once per table,
    never confused with a table that took the place of one since freed."""
    body = b'{"t":"ping","n":1}'
    with pytest.raises(ProtocolError, match="unknown message type 'ping'"):
        wire.decode(body)
    for _ in range(3):
        table = {"ping": {"n": int}}
        assert wire.decode(body, table)["n"] == 1
        del table
        table = {"ping": {"n": str}}
        with pytest.raises(ProtocolError, match="ping message lacks a valid 'n'"):
            wire.decode(body, table)
        del table


def test_handshake_keys_are_the_documented_hmacs_of_the_transcript():
    """HMAC(token, label | SHA-256(hello) | SHA-256(challenge)) for each role and the session key,
    as the module docstring writes them; one call gives what the three functions give."""
    import hashlib
    import hmac

    token, hello, challenge = os.urandom(24), b'{"t":"hello","n":1}', b'{"t":"challenge","n":2}'
    t = hashlib.sha256(hello).digest() + hashlib.sha256(challenge).digest()

    def mac(label):
        return hmac.new(token, b"jobset-runtime-group/1 " + label + b"\0" + t, hashlib.sha256).digest()

    keys = wire.handshake_keys(token, hello, challenge)
    assert keys.server_proof == mac(b"server proof").hex() == wire.server_proof(token, hello, challenge)
    assert keys.member_proof == mac(b"member proof").hex() == wire.member_proof(token, hello, challenge)
    assert keys.session_key == mac(b"session key") == wire.session_key(token, hello, challenge)
    # Without a token (--insecure) the same construction with an empty key.
    assert wire.handshake_keys(b"", hello, challenge).session_key == wire.session_key(b"", hello, challenge)


def test_session_tags_are_hmac_of_direction_sequence_and_body():
    """Each sealed frame's tag, through the copied key state, is HMAC(key, direction | seq | json)."""
    import hashlib
    import hmac

    member, server = pair()
    for seq in range(3):
        data = wire.encode({"t": "hb", "attempt": 0, "epoch": seq})
        frame = member.seal_encoded(data)
        want = hmac.new(KEY, wire.TO_SERVER + seq.to_bytes(8, "big") + data, hashlib.sha256).digest()
        assert frame[4:4 + wire.TAG_LEN] == want
        assert server.open(frame[4:])["epoch"] == seq


def test_encode_is_compact_ascii_json():
    data = wire.encode({"t": "fail", "attempt": 0, "epoch": 1, "code": None, "cause": "d\u00e9j\u00e0 \u2603"})
    assert data == b'{"t":"fail","attempt":0,"epoch":1,"code":null,"cause":"d\\u00e9j\\u00e0 \\u2603"}'
