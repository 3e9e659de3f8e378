"""An embedded authoritative DNS server for the local runner and the tests.

It answers the way a cluster DNS answers for a JobSet's headless Service:
A/AAAA records per pod hostname (`<host>.<subdomain>.<ns>.svc.<domain>`) that
appear, change (a new IP after a restart) and disappear while it runs.  It is
authoritative only: NXDOMAIN for unknown names inside its zones, REFUSED for
names outside them, never recursion.  UDP answers larger than 512 bytes (or
the client's EDNS payload size) come back empty with TC set, so the client
retries over TCP, where the full answer is sent (RFC 1035 4.2, RFC 7766).

Fault hooks reproduce what users hit with cluster DNS (records late by
seconds, SERVFAIL, lost datagrams, a server that never answers; see
kubernetes/kubernetes#117819 and #127259):

    server.set(name, ips, visible_after=5.0)   # NXDOMAIN for 5 s, then the record
    server.servfail.add(name)                  # SERVFAIL for that name
    server.drop_first_udp = 10                 # the next 10 UDP queries get no reply
    server.drop_rate = 0.05                    # 5 % of UDP queries get no reply
    server.silent = True                       # read every query, answer none

A single background thread serves UDP and TCP with a selector.  The server
acts on DNS queries only and changes nothing on the network's behalf.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import random
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from ..addresses import join_host_port

__all__ = ["DnsServer", "normalize"]

log = logging.getLogger("jobset_runtime.local.dns")

UDP_DEFAULT_PAYLOAD = 512  # RFC 1035 4.2.1: without EDNS a UDP message is at most 512 bytes
_TCP_MAX_CONNS = 512
_TCP_IDLE_S = 30.0


def _parents(key: str):
    """`a.b.c.` -> `b.c.`, `c.`: the names above `key` (the root left out)."""
    parts = key.split(".")
    return (".".join(parts[i:]) for i in range(1, len(parts) - 1))


def normalize(name: str) -> str:
    """Lower-case absolute form, with the trailing dot: the key of every table here."""
    name = name.strip().lower()
    return name if name.endswith(".") else name + "."


@dataclass(frozen=True)
class _Record:
    v4: tuple[str, ...]
    v6: tuple[str, ...]
    visible_at: float  # time.monotonic() from which the record is answered
    v4_wire: tuple[bytes, ...] = ()  # packed addresses, for the fast path


_HEADER = struct.Struct("!HHHHHH")
_A_RR = struct.Struct("!HHHIH")  # pointer to the question name, type A, class IN, ttl, rdlength 4


class _TcpConn:
    __slots__ = ("inbuf", "last", "outbuf", "sock")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.last = time.monotonic()


class DnsServer:
    """Authoritative DNS over UDP and TCP on one address and port.

    `zones`: the domains it is authoritative for (e.g. `svc.cluster.local`);
    empty means every name.  `ttl` is the TTL of answers and of negative
    answers (SOA minimum): 0 by default so that nothing caches a late record's
    NXDOMAIN.
    """

    def __init__(self, address: str = "127.0.0.1", port: int = 0, zones=(), *, ttl: int = 0):
        self._bind_ip = address
        self._bind_port = int(port)
        self._zones = tuple(dns.name.from_text(normalize(z)) for z in zones) or (dns.name.root,)
        self._zone_texts = tuple(z.to_text().lower() for z in self._zones)
        self.ttl = int(ttl)
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {}
        # Every name with records below it -> when the first of them became (or becomes) visible;
        # None = stale, rebuilt on the next negative answer.  Kept up to date as records are added,
        # so a bootstrap's records appearing one by one never rebuild it (one pass per new record,
        # over every record, made each negative answer cost milliseconds at 12,736 records).
        self._ancestors: dict[str, float] | None = None
        self._soa_wire: dict[tuple[str, int], bytes] = {}  # (zone, ttl) -> SOA rdata, uncompressed
        # Fault hooks (read by the serving thread; plain attributes, set them any time).
        self.servfail: set[str] = set()
        self.drop_first_udp: int = 0
        self.drop_rate: float = 0.0
        self.silent: bool = False
        # Counters, for tests and benchmarks.
        self.stats = {"udp": 0, "tcp": 0, "dropped": 0, "truncated": 0}
        self._rng = random.Random()
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._stopping = False
        self._conns: dict[int, _TcpConn] = {}

    # --- records ------------------------------------------------------------
    def set(self, name: str, ips, *, visible_after: float = 0.0) -> None:
        """Set (or replace) the addresses of `name`, answered after `visible_after` s."""
        if isinstance(ips, str):
            ips = [ips]
        v4, v6 = [], []
        for ip in ips:
            addr = ipaddress.ip_address(ip)  # ValueError on a bad address, at the caller
            (v4 if addr.version == 4 else v6).append(str(addr))
        rec = _Record(tuple(v4), tuple(v6), time.monotonic() + max(0.0, float(visible_after)),
                      tuple(socket.inet_aton(ip) for ip in v4))
        key = normalize(name)
        if self._zone_of(dns.name.from_text(key)) is None:
            raise ValueError(f"{name!r} is outside this server's zones {list(self._zone_texts)}: it would be REFUSED")
        with self._lock:
            if key in self._records:
                self._ancestors = None  # replaced: an earlier visible_at no longer holds
            elif self._ancestors is not None:
                for parent in _parents(key):
                    if rec.visible_at < self._ancestors.get(parent, float("inf")):
                        self._ancestors[parent] = rec.visible_at
            self._records[key] = rec

    def remove(self, name: str) -> None:
        """Forget `name`: NXDOMAIN from now on.  Unknown names are ignored."""
        with self._lock:
            if self._records.pop(normalize(name), None) is not None:
                self._ancestors = None

    def records(self) -> dict[str, list[str]]:
        """A snapshot: {name: [ips]} of every record set, visible yet or not."""
        with self._lock:
            return {k: list(r.v4 + r.v6) for k, r in self._records.items()}

    # --- lifecycle ----------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        """(ip, port) actually bound; the same port serves UDP and TCP."""
        if self._udp is None:
            raise RuntimeError("DnsServer is not started")
        host, port = self._udp.getsockname()[:2]
        return host, port

    @property
    def nameserver(self) -> str:
        """`ip:port` (`[ip]:port` for IPv6), the form JOBSET_RUNTIME_NAMESERVERS takes."""
        return join_host_port(*self.address)

    def start(self) -> DnsServer:
        if self._thread is not None:
            raise RuntimeError("DnsServer already started")
        family = socket.AF_INET6 if ":" in self._bind_ip else socket.AF_INET
        self._udp, self._tcp = self._bind(family)
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._udp, self._tcp, self._wake_r, self._wake_w):
            s.setblocking(False)
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name=f"dns-{self.address[1]}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every socket; returns once the thread has ended."""
        if self._thread is None:
            return
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join()
        self._thread = None
        for c in list(self._conns.values()):
            c.sock.close()
        self._conns.clear()
        for s in (self._udp, self._tcp, self._wake_r, self._wake_w):
            if s is not None:
                s.close()
        self._udp = self._tcp = self._wake_r = self._wake_w = None

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _bind(self, family):
        # Port 0: let the kernel pick the UDP port, then take the same TCP port;
        # retry if some other TCP socket already holds that number.
        for _ in range(50):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            try:
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                udp.bind((self._bind_ip, self._bind_port))
                port = udp.getsockname()[1]
                tcp = socket.socket(family, socket.SOCK_STREAM)
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    tcp.bind((self._bind_ip, port))
                    tcp.listen(128)
                except OSError as e:
                    tcp.close()
                    if e.errno == errno.EADDRINUSE and self._bind_port == 0:
                        udp.close()
                        continue
                    raise
                return udp, tcp
            except BaseException:
                udp.close()
                raise
        raise OSError(errno.EADDRINUSE, f"no free UDP+TCP port on {self._bind_ip}")

    # --- serving thread -----------------------------------------------------
    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._udp, selectors.EVENT_READ, "udp")
        sel.register(self._tcp, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stopping:
                for key, events in sel.select(timeout=1.0):
                    kind = key.data
                    if kind == "udp":
                        self._serve_udp()
                    elif kind == "listen":
                        self._accept(sel)
                    elif kind == "wake":
                        return
                    else:
                        self._serve_tcp(sel, kind, events)
                self._reap_idle(sel)
        finally:
            sel.close()

    def _serve_udp(self) -> None:
        for _ in range(256):  # bounded, so TCP clients are not starved
            try:
                data, peer = self._udp.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.stats["udp"] += 1
            if self.silent:
                continue
            if self.drop_first_udp > 0:
                self.drop_first_udp -= 1
                self.stats["dropped"] += 1
                continue
            if self.drop_rate > 0 and self._rng.random() < self.drop_rate:
                self.stats["dropped"] += 1
                continue
            reply = self._answer_safely(data, udp=True)
            if reply is not None:
                try:
                    self._udp.sendto(reply, peer)
                except OSError:
                    pass  # a full send buffer is a lost datagram, as on a real network

    def _accept(self, sel) -> None:
        try:
            sock, _ = self._tcp.accept()
        except OSError:
            return
        if len(self._conns) >= _TCP_MAX_CONNS:
            sock.close()
            return
        sock.setblocking(False)
        conn = _TcpConn(sock)
        self._conns[sock.fileno()] = conn
        sel.register(sock, selectors.EVENT_READ, conn)

    def _close(self, sel, conn: _TcpConn) -> None:
        self._conns.pop(conn.sock.fileno(), None)
        try:
            sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _flush(self, sel, conn: _TcpConn) -> bool:
        """Send what the socket takes now; False when the connection broke (and is closed)."""
        try:
            n = conn.sock.send(conn.outbuf)
            del conn.outbuf[:n]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(sel, conn)
            return False
        return True

    def _serve_tcp(self, sel, conn: _TcpConn, events) -> None:
        conn.last = time.monotonic()
        if events & selectors.EVENT_WRITE and conn.outbuf and not self._flush(sel, conn):
            return
        if events & selectors.EVENT_READ:
            try:
                chunk = conn.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                chunk = None
            except OSError:
                chunk = b""
            if chunk == b"":
                self._close(sel, conn)
                return
            if chunk:
                conn.inbuf += chunk
            # RFC 1035 4.2.2: each message is prefixed with its 2-byte length.
            while len(conn.inbuf) >= 2:
                (size,) = struct.unpack_from("!H", conn.inbuf)
                if len(conn.inbuf) < 2 + size:
                    break
                data = bytes(conn.inbuf[2 : 2 + size])
                del conn.inbuf[: 2 + size]
                self.stats["tcp"] += 1
                if self.silent:
                    continue
                reply = self._answer_safely(data, udp=False)
                if reply is not None:
                    conn.outbuf += struct.pack("!H", len(reply)) + reply
        if conn.outbuf and not self._flush(sel, conn):
            return
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0)
        sel.modify(conn.sock, want, conn)

    def _reap_idle(self, sel) -> None:
        now = time.monotonic()
        for conn in [c for c in self._conns.values() if now - c.last > _TCP_IDLE_S]:
            self._close(sel, conn)

    # --- answering (pure apart from the record table) ------------------------
    def _answer_safely(self, wire: bytes, *, udp: bool) -> bytes | None:
        try:
            return self._answer(wire, udp=udp)
        except Exception:
            log.exception("DNS server: no answer to a %d-byte query", len(wire))
            return None

    def _answer(self, wire: bytes, *, udp: bool) -> bytes | None:
        fast = self._fast_answer(wire, udp)
        if fast is not None:
            return fast
        try:
            query = dns.message.from_wire(wire)
        except dns.message.ShortHeader:
            return None  # not even a header: nothing to answer to
        except Exception:  # noqa: BLE001 - whatever fails to parse is FORMERR
            return self._formerr(wire)
        if query.flags & dns.flags.QR:
            return None  # a response, not a query: never answer those
        resp = dns.message.make_response(query)
        if query.opcode() != dns.opcode.QUERY:
            resp.set_rcode(dns.rcode.NOTIMP)
            return resp.to_wire()
        if len(query.question) != 1:
            resp.set_rcode(dns.rcode.FORMERR)
            return resp.to_wire()
        q = query.question[0]
        self._fill(resp, q.name, q.rdtype, q.rdclass)
        if not udp:
            return resp.to_wire(max_size=65535)
        limit = max(UDP_DEFAULT_PAYLOAD, query.payload if query.edns >= 0 else 0)
        try:
            return resp.to_wire(max_size=limit)
        except dns.exception.TooBig:
            # Too big for UDP: an empty answer with TC, so the client asks over TCP.
            self.stats["truncated"] += 1
            resp.answer.clear()
            resp.authority.clear()
            resp.additional.clear()
            resp.flags |= dns.flags.TC
            return resp.to_wire(max_size=limit)

    def _fast_answer(self, wire: bytes, udp: bool) -> bytes | None:
        """The common cases by hand: a plain A query for a visible record, and a plain A or AAAA
        query for a name without a visible record (NXDOMAIN, or NODATA for an empty
        non-terminal: what pods polling for a late record get, in bursts).

        Anything else (EDNS, other types, AAAA answers, SERVFAIL, names outside the zones)
        returns None and goes through dnspython.
        """
        if len(wire) < 17:
            return None
        qid, flags, qd, an, ns, ar = _HEADER.unpack_from(wire)
        if flags & 0xF800 or qd != 1 or an or ns or ar:
            return None  # a response, another opcode, or extra sections
        off, labels, starts = 12, [], []
        try:
            while True:
                n = wire[off]
                if n == 0:
                    off += 1
                    break
                if n > 63:
                    return None
                label = wire[off + 1 : off + 1 + n]
                if b"." in label:  # a label holding a dot is not a name of ours spelt in text: dnspython's
                    return None
                starts.append(off)
                labels.append(label.decode("ascii"))
                off += n + 1
        except (IndexError, UnicodeDecodeError):
            return None
        qtype = wire[off : off + 4]
        if qtype not in (b"\x00\x01\x00\x01", b"\x00\x1c\x00\x01") or off + 4 != len(wire):
            return None
        key = ".".join(labels).lower() + "."
        zone = max((i for i, z in enumerate(self._zone_texts) if z == "." or key == z or key.endswith("." + z)),
                   key=lambda i: len(self._zone_texts[i]), default=None)
        if zone is None:
            return None
        if key in self.servfail or key[:-1] in self.servfail:
            return None
        now = time.monotonic()
        rec = self._records.get(key)  # one dict read: atomic, the lock is for writers
        limit = UDP_DEFAULT_PAYLOAD if udp else 65535
        if rec is not None and rec.visible_at <= now:
            if qtype[1] != 1 or not rec.v4_wire:
                return None  # AAAA, or NODATA for A: dnspython's
            out = [_HEADER.pack(qid, 0x8400 | (flags & 0x0100), 1, len(rec.v4_wire), 0, 0), wire[12 : off + 4]]
            rr = _A_RR.pack(0xC00C, 1, 1, self.ttl, 4)
            for packed in rec.v4_wire:
                out.append(rr)
                out.append(packed)
            reply = b"".join(out)
            return reply if len(reply) <= limit else None
        # RFC 2308: a negative answer carries the zone's SOA in the authority section; NXDOMAIN
        # only when nothing exists at or below the name.
        zone_text = self._zone_texts[zone]
        with self._lock:
            exists = key == zone_text or self._ancestor_map().get(key, now + 1) <= now
        zone_labels = 0 if zone_text == "." else zone_text.count(".")
        # The SOA's owner: a pointer to the zone's labels in the question (the root: one zero byte).
        owner = b"\0" if zone_labels == 0 else struct.pack("!H", 0xC000 | starts[len(labels) - zone_labels])
        rdata = self._soa_rdata(zone)
        reply = b"".join((
            _HEADER.pack(qid, 0x8400 | (flags & 0x0100) | (0 if exists else dns.rcode.NXDOMAIN), 1, 0, 1, 0),
            wire[12 : off + 4], owner, struct.pack("!HHIH", 6, 1, self.ttl, len(rdata)), rdata))
        return reply if len(reply) <= limit else None

    def _soa_rdata(self, zone: int) -> bytes:
        """The SOA record's data for zone number `zone`, names uncompressed (what _soa says)."""
        key = (self._zone_texts[zone], self.ttl)
        rdata = self._soa_wire.get(key)
        if rdata is None:
            rdata = self._soa_wire[key] = self._soa(self._zones[zone])[0].to_wire()
        return rdata

    @staticmethod
    def _formerr(wire: bytes) -> bytes | None:
        if len(wire) < 12:
            return None
        (qid, flags) = struct.unpack_from("!HH", wire)
        if flags & 0x8000:
            return None
        # Header only: same id, QR set, opcode kept, rcode FORMERR.
        return struct.pack("!HHHHHH", qid, 0x8000 | (flags & 0x7800) | dns.rcode.FORMERR, 0, 0, 0, 0)

    def _zone_of(self, qname: dns.name.Name) -> dns.name.Name | None:
        best = None
        for z in self._zones:
            if qname.is_subdomain(z) and (best is None or len(z) > len(best)):
                best = z
        return best

    def _fill(self, resp, qname: dns.name.Name, rdtype, rdclass) -> None:
        zone = self._zone_of(qname)
        if zone is None or rdclass != dns.rdataclass.IN:
            resp.set_rcode(dns.rcode.REFUSED)  # not ours: no recursion, no answer
            return
        resp.flags |= dns.flags.AA
        key = qname.to_text().lower()
        if key in self.servfail or key[:-1] in self.servfail:
            resp.flags &= ~dns.flags.AA
            resp.set_rcode(dns.rcode.SERVFAIL)
            return
        now = time.monotonic()
        with self._lock:
            rec = self._records.get(key)
            if rec is not None and rec.visible_at > now:
                rec = None
            exists = rec is not None or qname == zone or self._ancestor_map().get(key, now + 1) <= now
        if rec is not None:
            want = {dns.rdatatype.A: rec.v4, dns.rdatatype.AAAA: rec.v6}
            types = (dns.rdatatype.A, dns.rdatatype.AAAA) if rdtype == dns.rdatatype.ANY else (rdtype,)
            for t in types:
                if want.get(t):
                    resp.answer.append(dns.rrset.from_text_list(qname, self.ttl, "IN", t, want[t]))
        if qname == zone and rdtype in (dns.rdatatype.SOA, dns.rdatatype.ANY):
            resp.answer.append(self._soa(zone))
        if not resp.answer:
            # RFC 2308: negative answers carry the zone's SOA; NXDOMAIN only when
            # the name does not exist at all (an empty non-terminal is NODATA).
            if not exists:
                resp.set_rcode(dns.rcode.NXDOMAIN)
            resp.authority.append(self._soa(zone))

    def _ancestor_map(self) -> dict[str, float]:
        # Called with the lock held.  A name exists (NODATA, not NXDOMAIN) once a record below it
        # is visible, so a late record's parent is not an empty non-terminal before it appears.
        if self._ancestors is None:
            anc: dict[str, float] = {}
            for key, r in self._records.items():
                for parent in _parents(key):
                    if r.visible_at < anc.get(parent, float("inf")):
                        anc[parent] = r.visible_at
            self._ancestors = anc
        return self._ancestors

    def _soa(self, zone: dns.name.Name):
        mname = dns.name.from_text("ns", zone)
        rname = dns.name.from_text("hostmaster", zone)
        text = f"{mname} {rname} 1 3600 600 86400 {self.ttl}"
        return dns.rrset.from_text(zone, self.ttl, "IN", "SOA", text)
