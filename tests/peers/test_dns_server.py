"""The embedded authoritative DNS server, asked by dnspython (the reference client)."""

import socket
import struct
import threading
import time

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from dnsfixtures import ask

from jobset_runtime.local.dns import DnsServer

HOST = "js-worker-0-0.js.default.svc.cluster.local"


def a_records(resp):
    return sorted(r.address for rr in resp.answer if rr.rdtype == dns.rdatatype.A for r in rr)


def test_answers_set_records_authoritatively(dns_server):
    dns_server.set(HOST, ["10.0.0.1"])
    resp = ask(dns_server.address, HOST)
    assert resp.rcode() == dns.rcode.NOERROR
    assert resp.flags & dns.flags.AA and not resp.flags & dns.flags.RA
    assert a_records(resp) == ["10.0.0.1"]
    # Names are case-insensitive; the trailing dot is optional in set().
    assert a_records(ask(dns_server.address, HOST.upper())) == ["10.0.0.1"]


def test_unknown_name_in_zone_is_nxdomain_with_soa(dns_server):
    resp = ask(dns_server.address, "nope.js.default.svc.cluster.local")
    assert resp.rcode() == dns.rcode.NXDOMAIN
    assert resp.authority and resp.authority[0].rdtype == dns.rdatatype.SOA


def test_empty_non_terminal_is_nodata_not_nxdomain(dns_server):
    dns_server.set(HOST, ["10.0.0.1"])
    resp = ask(dns_server.address, "js.default.svc.cluster.local")
    assert resp.rcode() == dns.rcode.NOERROR and not resp.answer


def test_outside_zones_is_refused(dns_server):
    resp = ask(dns_server.address, "example.com")
    assert resp.rcode() == dns.rcode.REFUSED and not resp.answer


def test_a_label_holding_a_dot_is_not_read_as_two_labels(dns_server):
    """`js-worker-0-0.js` as one wire label is not the name of the record it spells in text: no
    answer with that record's address, and the name's own zone in the negative answer; a single
    label `svc.cluster.local` is a name outside the zones (REFUSED).  Never no answer at all."""
    dns_server.set(HOST, ["10.0.0.1"])

    def ask_raw(labels):
        name = b"".join(bytes([len(label)]) + label for label in labels) + b"\0"
        query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 1, 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(query, dns_server.address)
            return dns.message.from_wire(s.recv(4096))

    resp = ask_raw([b"svc.cluster.local"])
    assert resp.rcode() == dns.rcode.REFUSED and not resp.answer, resp
    resp = ask_raw([b"js-worker-0-0.js", b"default", b"svc", b"cluster", b"local"])
    assert resp.rcode() == dns.rcode.NXDOMAIN and not resp.answer, resp
    owner = resp.authority[0].name.to_text()
    assert HOST.endswith(owner.rstrip(".")) and "\\" not in owner, resp


def test_change_and_remove(dns_server):
    dns_server.set(HOST, ["10.0.0.1"])
    dns_server.set(HOST + ".", ["10.0.0.2"])  # a restarted pod: new IP, same name
    assert a_records(ask(dns_server.address, HOST)) == ["10.0.0.2"]
    dns_server.remove(HOST)
    assert ask(dns_server.address, HOST).rcode() == dns.rcode.NXDOMAIN


def test_aaaa_and_nodata(dns_server):
    dns_server.set(HOST, ["10.0.0.1", "fd00::1"])
    resp = ask(dns_server.address, HOST, "AAAA")
    assert [r.address for r in resp.answer[0]] == ["fd00::1"]
    resp = ask(dns_server.address, HOST, "TXT")
    assert resp.rcode() == dns.rcode.NOERROR and not resp.answer


def test_visible_after_delays_the_record(dns_server):
    dns_server.set(HOST, ["10.0.0.3"], visible_after=0.5)
    assert ask(dns_server.address, HOST).rcode() == dns.rcode.NXDOMAIN
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        resp = ask(dns_server.address, HOST)
        if resp.rcode() == dns.rcode.NOERROR:
            break
        time.sleep(0.05)
    assert a_records(resp) == ["10.0.0.3"]


def test_tcp_and_truncation(dns_server):
    ips = [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(100)]  # ~1.6 KB of answers
    dns_server.set("svc-wide.js.default.svc.cluster.local", ips)
    udp = ask(dns_server.address, "svc-wide.js.default.svc.cluster.local")
    assert udp.flags & dns.flags.TC and not udp.answer
    tcp = ask(dns_server.address, "svc-wide.js.default.svc.cluster.local", tcp=True)
    assert not tcp.flags & dns.flags.TC
    assert a_records(tcp) == sorted(ips)
    # A client announcing a large EDNS payload gets the full answer over UDP.
    big = ask(dns_server.address, "svc-wide.js.default.svc.cluster.local", use_edns=0, payload=4096)
    assert a_records(big) == sorted(ips)
    assert dns_server.stats["truncated"] == 1


def test_tcp_pipelined_queries_on_one_connection(dns_server):
    dns_server.set(HOST, ["10.0.0.1"])
    with socket.create_connection(dns_server.address, timeout=5) as s:
        ids = [101, 102, 103]
        for qid in ids:
            q = dns.message.make_query(HOST, "A", id=qid).to_wire()
            s.sendall(struct.pack("!H", len(q)) + q)
        got = []
        buf = b""
        while len(got) < 3:
            buf += s.recv(65535)
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                n = struct.unpack("!H", buf[:2])[0]
                got.append(dns.message.from_wire(buf[2 : 2 + n]))
                buf = buf[2 + n :]
    assert [m.id for m in got] == ids
    assert all(a_records(m) == ["10.0.0.1"] for m in got)


def test_servfail_for_chosen_names(dns_server):
    dns_server.set(HOST, ["10.0.0.1"])
    dns_server.servfail.add(HOST)
    assert ask(dns_server.address, HOST).rcode() == dns.rcode.SERVFAIL
    dns_server.servfail.clear()
    assert ask(dns_server.address, HOST).rcode() == dns.rcode.NOERROR


def test_drop_first_udp(dns_server):
    dns_server.set(HOST, ["10.0.0.1"])
    dns_server.drop_first_udp = 2
    for _ in range(2):
        with pytest.raises(dns.exception.Timeout):
            ask(dns_server.address, HOST, timeout=0.3)
    assert a_records(ask(dns_server.address, HOST)) == ["10.0.0.1"]
    assert dns_server.stats["dropped"] == 2


def test_drop_rate_one_drops_everything(dns_server):
    dns_server.drop_rate = 1.0
    with pytest.raises(dns.exception.Timeout):
        ask(dns_server.address, HOST, timeout=0.3)


def test_silent_answers_nothing_over_udp_or_tcp(dns_server):
    dns_server.set(HOST, ["10.0.0.1"])
    dns_server.silent = True
    with pytest.raises(dns.exception.Timeout):
        ask(dns_server.address, HOST, timeout=0.3)
    with pytest.raises(dns.exception.Timeout):
        ask(dns_server.address, HOST, tcp=True, timeout=0.3)
    assert dns_server.stats["udp"] >= 1 and dns_server.stats["tcp"] >= 1


def test_garbage_gets_formerr_or_nothing(dns_server):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff", dns_server.address)
        reply = s.recv(512)
    qid, flags = struct.unpack("!HH", reply[:4])
    assert qid == 0x1234 and flags & 0x8000 and flags & 0xF == dns.rcode.FORMERR
    dns_server.set(HOST, ["10.0.0.1"])  # and it still serves
    assert a_records(ask(dns_server.address, HOST)) == ["10.0.0.1"]


def test_concurrent_updates_and_queries(dns_server):
    stop = threading.Event()
    errors = []

    def churn():
        i = 0
        while not stop.is_set():
            dns_server.set(HOST, [f"10.0.{i % 200}.1"])
            i += 1

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(50):
            resp = ask(dns_server.address, HOST)
            if resp.rcode() != dns.rcode.NOERROR or len(a_records(resp)) != 1:
                errors.append(resp)
    finally:
        stop.set()
        t.join()
    assert not errors


def test_start_stop_releases_thread_and_port():
    before = {t.name for t in threading.enumerate()}
    server = DnsServer(zones=["cluster.local"]).start()
    ip, port = server.address
    assert port != 0 and server.nameserver == f"127.0.0.1:{port}"
    server.stop()
    server.stop()  # idempotent
    assert {t.name for t in threading.enumerate()} == before
    # Both the UDP and the TCP port are free again.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
        u.bind((ip, port))
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind((ip, port))


def test_fixed_port_and_no_zones_means_every_name():
    with DnsServer() as first:
        port = first.address[1]
    with DnsServer(port=port) as server:
        assert server.address[1] == port
        server.set("anything.example", ["192.0.2.1"])
        assert a_records(ask(server.address, "anything.example")) == ["192.0.2.1"]
        assert ask(server.address, "other.example").rcode() == dns.rcode.NXDOMAIN


def test_bad_ip_or_foreign_name_is_rejected_at_set(dns_server):
    with pytest.raises(ValueError):
        dns_server.set(HOST, ["10.0.0.300"])
    with pytest.raises(ValueError, match="outside this server's zones"):
        dns_server.set("js-0.example.com", ["10.0.0.1"])


def test_hand_built_and_dnspython_answers_agree(dns_server):
    # Plain queries take the hand-built path, EDNS queries the dnspython one.
    ips = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    dns_server.set(HOST, ips)
    plain = ask(dns_server.address, HOST.upper())
    edns = ask(dns_server.address, HOST.upper(), use_edns=0)
    for resp in (plain, edns):
        assert resp.rcode() == dns.rcode.NOERROR and resp.flags & dns.flags.AA and resp.flags & dns.flags.RD
        assert a_records(resp) == ips
        assert resp.question[0].name.to_text() == HOST.upper() + "."
    assert plain.answer[0].ttl == edns.answer[0].ttl == 0


def test_hand_built_negative_answers_agree_with_dnspython(dns_server):
    # Plain A/AAAA queries for names without a visible record take the hand-built path (pods
    # polling for a late record); EDNS queries the dnspython one.  Both must say the same.
    dns_server.set(HOST, ["10.0.0.1"])
    cases = [("nope.js.default.svc.cluster.local", "A", dns.rcode.NXDOMAIN),
             ("NOPE.js.default.svc.cluster.local", "AAAA", dns.rcode.NXDOMAIN),
             ("js.default.svc.cluster.local", "A", dns.rcode.NOERROR),  # empty non-terminal: NODATA
             ("svc.cluster.local", "AAAA", dns.rcode.NOERROR)]  # the zone apex
    for name, rdtype, rcode in cases:
        plain = ask(dns_server.address, name, rdtype)
        edns = ask(dns_server.address, name, rdtype, use_edns=0)
        for resp in (plain, edns):
            assert resp.rcode() == rcode, (name, rdtype, resp)
            assert resp.flags & dns.flags.AA and resp.flags & dns.flags.RD and not resp.answer
            assert resp.question[0].name.to_text() == name + "."
            (soa,) = resp.authority
            assert soa.rdtype == dns.rdatatype.SOA and soa.name.to_text() == "svc.cluster.local."
        assert plain.authority[0][0] == edns.authority[0][0] and plain.authority[0].ttl == edns.authority[0].ttl


def test_late_records_parent_exists_only_once_one_below_it_is_visible(dns_server):
    # Records added one by one, each visible later: the parent is NXDOMAIN until the first of
    # them appears, NODATA from then on (kept up to date per record, never rebuilt per answer).
    parent = "late.default.svc.cluster.local"
    dns_server.set(f"a.{parent}", ["10.0.1.1"], visible_after=0.6)
    dns_server.set(f"b.{parent}", ["10.0.1.2"], visible_after=30)
    assert ask(dns_server.address, parent).rcode() == dns.rcode.NXDOMAIN
    assert ask(dns_server.address, f"b.{parent}").rcode() == dns.rcode.NXDOMAIN
    deadline = time.monotonic() + 10
    while ask(dns_server.address, f"a.{parent}").rcode() != dns.rcode.NOERROR and time.monotonic() < deadline:
        time.sleep(0.05)
    resp = ask(dns_server.address, parent)
    assert resp.rcode() == dns.rcode.NOERROR and not resp.answer
    assert ask(dns_server.address, f"b.{parent}").rcode() == dns.rcode.NXDOMAIN  # still late itself
    # A record replaced with a later one: its parent no longer exists before that.
    dns_server.set(f"a.{parent}", ["10.0.1.1"], visible_after=30)
    dns_server.remove(f"b.{parent}")
    assert ask(dns_server.address, parent).rcode() == dns.rcode.NXDOMAIN


def test_ttl_change_reaches_the_hand_built_soa(dns_server):
    dns_server.ttl = 7
    resp = ask(dns_server.address, "gone.js.default.svc.cluster.local")
    assert resp.rcode() == dns.rcode.NXDOMAIN and resp.authority[0].ttl == 7
    assert resp.authority[0][0].minimum == 7
