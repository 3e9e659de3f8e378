"""Wait until peers exist: their hostnames resolve (DNS A or AAAA) and, optionally, a TCP port accepts.

Cluster DNS is late and flaky for new pods (records late by seconds to ~30 s,
flapping NXDOMAIN, old IPs after a restart: kubernetes/kubernetes#117819,
#127259), and a large JobSet has thousands of names.  So:

* `resolve_batch` asks for many names at once: one connected non-blocking UDP
  socket per server, a window of queries in flight, query wire made from a
  precomputed name, replies matched on id AND question, per-query
  retransmission (a lost datagram costs one name one retry, not a round), and
  truncated (TC) answers asked again over TCP.  Replies are parsed by hand:
  only the header, the question and the A (or AAAA) records of the answer
  section.  The address family is the pod's own (`family`): IPv4 asks A,
  IPv6 asks AAAA, and `auto` asks A, then AAAA for the names that have no A
  record, so an IPv6-only cluster costs a second query only where needed.
* `wait_for_hosts` repeats rounds for the names still missing (NXDOMAIN,
  SERVFAIL, no data, no reply) with tenacity's exponential backoff and jitter
  under one deadline, then connects to `port` on every address the same way,
  re-resolving names whose connection fails (their pod may have a new IP).

Only the standard library at module level; tenacity is imported when a round comes back short.
"""

from __future__ import annotations

import errno
import heapq
import ipaddress
import logging
import os
import random
import selectors
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass, field

from .addresses import FAMILIES, family_of
from .errors import ConfigError, DnsUnavailable, PeersTimeout, first_few
from .nameservers import Nameserver, format_nameserver, parse_one, system_nameservers

log = logging.getLogger("jobset_runtime.peers")

__all__ = ["FAMILIES", "NO_REPLY", "BatchResult", "family_of", "resolve_batch", "resolve_lone", "resolve_one",
           "wait_for_hosts", "wait_for_ports"]

NO_REPLY = "no reply"
NODATA = "no A record"
NODATA_AAAA = "no AAAA record"
NOT_ASKED = "not asked"  # the batch ended before this name got a verdict (never sent, or cut by the deadline)
_RCODES = {1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
# id | flags RD | QDCOUNT 1 | AN/NS/AR 0 -- the id is prepended per query.
_QUERY_FLAGS = b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
_QTYPE_A_IN = b"\x00\x01\x00\x01"
_QTYPE_AAAA_IN = b"\x00\x1c\x00\x01"
_QTYPE = {"ipv4": _QTYPE_A_IN, "ipv6": _QTYPE_AAAA_IN}
_HEADER = struct.Struct("!HHHH")
_RR = struct.Struct("!HHIH")
_TC, _QR = 0x0200, 0x8000


def _qname_wire(name: str) -> bytes:
    """`a.b.c` -> wire labels, lower case (the reply's question is compared case-blind)."""
    labels = name.rstrip(".").lower().encode("ascii").split(b".")
    wire = b"".join([bytes((len(label),)) + label for label in labels]) + b"\0"
    if len(wire) > 255 or not all(0 < len(label) < 64 for label in labels):
        raise ValueError(name)
    return wire


def _ip_literal(name: str) -> str | None:
    if not (name[-1:].isdigit() or ":" in name):
        return None  # cheap test first: most names are hostnames, and this runs per name
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return None


def _first_address(data: bytes, off: int, ancount: int, rtype_wanted: int) -> str | None:
    """The first IN A (1) or AAAA (28) address in the answer section starting at `off`, or None.

    Owner names are skipped, not compared, so an A at the end of a CNAME chain
    counts; the question was already matched.  Malformed data -> None.
    """
    try:
        for _ in range(ancount):
            while True:  # skip the owner name: labels, ending in a root label or a pointer
                n = data[off]
                if n == 0:
                    off += 1
                    break
                if n & 0xC0 == 0xC0:
                    off += 2
                    break
                if n & 0xC0:
                    return None
                off += n + 1
            rtype, rclass, _ttl, rdlen = _RR.unpack_from(data, off)
            off += 10
            if rtype == rtype_wanted and rclass == 1 and off + rdlen <= len(data):
                if rdlen == 4 and rtype == 1:
                    return "%d.%d.%d.%d" % tuple(data[off : off + 4])  # noqa: UP031 (hot path)
                if rdlen == 16 and rtype == 28:
                    return socket.inet_ntop(socket.AF_INET6, data[off : off + 16])
            off += rdlen
    except (IndexError, struct.error):
        return None
    return None


def _parse_reply(data: bytes, qid: int, question: bytes):
    """('ok', ip) | ('tc', None) | (status, None) | None when not the answer to `qid`/`question`."""
    if len(data) < 12:
        return None
    rid, flags, qdcount, ancount = _HEADER.unpack_from(data)
    if rid != qid or not flags & _QR or qdcount != 1:
        return None
    end = 12 + len(question)
    if data[12:end].lower() != question:
        return None
    if flags & _TC:
        return ("tc", None)
    rcode = flags & 0xF
    if rcode:
        return (_RCODES.get(rcode, f"rcode {rcode}"), None)
    aaaa = question[-4:] == _QTYPE_AAAA_IN
    ip = _first_address(data, end, ancount, 28 if aaaa else 1)
    return ("ok", ip) if ip else (NODATA_AAAA if aaaa else NODATA, None)


@dataclass
class BatchResult:
    """What one batch learnt: addresses, and the last answer for every name without one."""

    resolved: dict = field(default_factory=dict)  # name -> IPv4 or IPv6 address
    failed: dict = field(default_factory=dict)  # name -> NXDOMAIN | SERVFAIL | no A record | no reply | ...
    replies: int = 0  # answers received (any rcode): 0 means no server ever answered
    queries: int = 0  # datagrams and TCP queries sent


def _server_socket(server: Nameserver, kind=socket.SOCK_DGRAM) -> socket.socket:
    return socket.socket(socket.AF_INET6 if ":" in server[0] else socket.AF_INET, kind)


def _tcp_query(server: Nameserver, qid: int, question: bytes, timeout: float):
    """One query over TCP (after a truncated UDP answer); same result shape as _parse_reply."""
    wire = struct.pack("!H", qid) + _QUERY_FLAGS + question
    with _server_socket(server, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(server)
        s.sendall(struct.pack("!H", len(wire)) + wire)
        buf = b""
        need = 2
        while len(buf) < need:
            chunk = s.recv(65535)
            if not chunk:
                return None
            buf += chunk
            if len(buf) >= 2:
                need = 2 + struct.unpack_from("!H", buf)[0]
    return _parse_reply(buf[2:need], qid, question)


def resolve_batch(
    names,
    nameservers,
    *,
    tries: int = 5,
    max_rto: float = 1.0,
    silence: float = 2.0,
    max_window: int = 512,
    deadline: float | None = None,
    family: str = "ipv4",
    first_rto: float | None = None,
) -> BatchResult:
    """Ask for the address of every name once (with retransmissions); no waiting between rounds.

    `family`: "ipv4" asks A, "ipv6" asks AAAA, "auto" asks A and then AAAA for
    the names that answered without an A record.

    `names`: absolute hostnames (trailing dot optional); IP literals resolve to
    themselves.  `nameservers`: [(ip, port)] or ['ip[:port]']; retransmissions
    go to the next server in turn.  A query unanswered after the retransmission
    timeout (from the measured round trip, doubled per try, at most `max_rto`)
    is sent again, up to `tries` sends.  The batch ends early when no server
    has answered anything for `silence` seconds, and at `deadline`
    (time.monotonic()).  Names without an A record are in `failed` with the
    last answer seen.  An invalid name raises ConfigError.  `first_rto`: the
    retransmission timeout before any round trip is measured (default
    _UdpEngine.INITIAL_RTO; a lone lookup's is LONE_RTO).
    """
    if family not in FAMILIES:
        raise ConfigError(f"address family {family!r}: use one of {', '.join(FAMILIES)}")
    servers = _normalize_servers(nameservers)
    if not servers:
        raise ConfigError("no DNS server to ask: set JOBSET_RUNTIME_NAMESERVERS or a nameserver in /etc/resolv.conf")
    qtype = _QTYPE["ipv6" if family == "ipv6" else "ipv4"]
    result = BatchResult()
    jobs = []
    for name in dict.fromkeys(names):
        ip = _ip_literal(name)
        if ip is not None:
            result.resolved[name] = ip
            continue
        try:
            jobs.append((name, _qname_wire(name) + qtype))
        except (ValueError, UnicodeEncodeError):
            raise ConfigError(f"{name!r} is not a valid DNS hostname (ASCII labels of 1-63 characters)") from None
    if not jobs:
        return result
    deadline = float("inf") if deadline is None else deadline
    engine = _UdpEngine(servers, result, max(1, tries), max_rto, silence, max(1, max_window), deadline, first_rto)
    truncated = engine.run(jobs)
    for name, question in truncated:
        _tcp_phase(name, question, servers, result, max_rto * 2, deadline)
    if family == "auto":
        # IPv6-only clusters: the names that exist without an A record, asked again for AAAA.
        no_a = [(name, _qname_wire(name) + _QTYPE_AAAA_IN) for name, status in result.failed.items() if status == NODATA]
        if no_a:
            for name, question in engine.run(no_a):
                _tcp_phase(name, question, servers, result, max_rto * 2, deadline)
    return result


# A lone lookup (a member asking for its server, a server checking the pods that join it): a few
# names, no round trip to learn a retransmission timeout from.  Sent again after LONE_RTO = 2 s,
# as the stub resolvers do: c-ares DEFAULT_TIMEOUT 2000 ms (src/lib/ares_private.h), dnspython's
# Resolver.timeout 2.0 s (dns/resolver.py), glibc RES_TIMEOUT 5 s (resolv/resolv.h); RFC 1035
# 4.2.1 puts the minimum retransmission interval at 2-5 s.  A copy sent sooner reaches a server
# that is only busy (every pod of a large job asking at once), and it must answer both: 1 s
# retransmitted thousands of a 12,736-pod bootstrap's queries (bench/dns_bootstrap.py, docs/peers.md).
LONE_RTO = 2.0
LONE_TRIES = 2  # glibc's RES_DFLRETRY
LONE_TIMEOUT = LONE_RTO * LONE_TRIES  # the last copy's answer waited for as long as the first's


def resolve_lone(names, nameservers=None, *, family: str = "auto", timeout: float = LONE_TIMEOUT) -> BatchResult:
    """A few names, each sent at most LONE_TRIES times, LONE_RTO apart, answers waited for up
    to `timeout` (the whole lookup)."""
    return resolve_batch(names, nameservers, tries=LONE_TRIES, max_rto=LONE_RTO, first_rto=LONE_RTO,
                         silence=max(timeout, LONE_TIMEOUT), deadline=time.monotonic() + timeout, family=family)


# After a name did not resolve, resolve_one asks for it again only once this hold has passed
# (RFC 2308's negative caching, kept short): 0.5 s, doubled per miss, at most NEGATIVE_HOLD_MAX,
# jittered downwards.  A group member retries after 0.1, 0.2, 0.4, ... s (admission's client
# backoff): its first quick retries cost no query for a record late by seconds, and once its
# backoff reaches its 2 s cap every retry asks again, so a late record is seen as soon as before.
NEGATIVE_HOLD_FIRST = 0.5
NEGATIVE_HOLD_MAX = 2.0  # no more than the client backoff's cap: never a retry skipped at the cap


class NegativeHolds:
    """Per name: when resolve_one may ask again after a miss, and why it missed.  One per
    process (a pod) by default; a caller standing for many pods at once passes its own each."""

    def __init__(self):
        import threading

        self._lock = threading.Lock()
        self._held: dict[tuple, tuple[float, float, str]] = {}  # key -> (until, hold, verdict)

    def check(self, key: tuple) -> str | None:
        """The verdict still held for `key` (no query now), or None: ask."""
        with self._lock:
            entry = self._held.get(key)
        if entry is None or time.monotonic() >= entry[0]:
            return None
        return f"{entry[2]}; not asked again within {entry[1]:g} s of that answer"

    def missed(self, key: tuple, verdict: str) -> None:
        with self._lock:
            _, hold, _ = self._held.get(key, (0.0, NEGATIVE_HOLD_FIRST / 2, ""))
            hold = min(NEGATIVE_HOLD_MAX, hold * 2)
            # Jittered down only (never past a retry of the caller's at its cap), so that pods
            # that missed together do not all ask again together.
            self._held[key] = (time.monotonic() + hold * random.uniform(0.75, 1.0), hold, verdict)

    def found(self, key: tuple) -> None:
        with self._lock:
            self._held.pop(key, None)


_holds = NegativeHolds()


def resolve_one(name: str, nameservers=None, *, timeout: float = LONE_TIMEOUT, family: str = "auto",
                holds: NegativeHolds | None = None) -> str:
    """One name's address, from one query in the pod's family (retransmitted only if unanswered).

    Raises LookupError naming the last answer (NXDOMAIN, no reply, ...) when it has none:
    the caller decides when to ask again (a group member: after its backoff).  A call made
    while the last miss of the same name is held (NEGATIVE_HOLD_*) raises at once, without a
    query: however often the caller retries, a late record costs a query per hold."""
    holds = _holds if holds is None else holds
    key = (name.lower().rstrip("."), family, repr(nameservers))
    held = holds.check(key)
    if held is not None:
        raise LookupError(f"{name} does not resolve yet ({held})")
    got = resolve_lone([name], nameservers, family=family, timeout=timeout)
    if name in got.resolved:
        holds.found(key)
        return got.resolved[name]
    verdict = _verdict(got.failed.get(name))
    holds.missed(key, verdict)
    raise LookupError(f"{name} does not resolve yet ({verdict})")


class _UdpEngine:
    """Queries in flight over connected UDP sockets.

    Retransmission timeout as TCP computes it (RFC 6298: srtt + 4 rttvar,
    samples only from queries sent once), and a window that grows by one per
    answer until the first loss, then halves per loss and grows slowly (TCP
    Reno's slow start / congestion avoidance).  A loopback dnsmasq drops
    queries once a few hundred wait in its socket buffer; the window finds
    that limit instead of a fixed guess.
    """

    MIN_RTO = 0.02
    INITIAL_RTO = 0.2
    INITIAL_WINDOW = 32

    def __init__(self, servers, result, tries, max_rto, silence, max_window, deadline, first_rto=None):
        self.servers = servers
        self.result = result
        self.tries = tries
        self.max_rto = max_rto
        self.silence = silence
        self.max_window = max_window
        self.deadline = deadline
        self.srtt = None
        self.rttvar = 0.0
        self.rto = min(self.INITIAL_RTO if first_rto is None else first_rto, max_rto)
        self.window = float(min(self.INITIAL_WINDOW, max_window))
        self.ssthresh = float(max_window)
        self.last_cut = 0.0

    def run(self, jobs):
        socks = []
        sel = selectors.DefaultSelector()
        try:
            for server in self.servers:
                s = _server_socket(server)
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
                except OSError:
                    pass
                s.setblocking(False)
                s.connect(server)  # the kernel then drops datagrams from anyone else
                socks.append(s)
                sel.register(s, selectors.EVENT_READ)
            return self._loop(jobs, socks, sel)
        finally:
            sel.close()
            for s in socks:
                s.close()

    def _loop(self, jobs, socks, sel):
        # The hot loop: a few microseconds per name, so state lives in locals
        # (window, RTO) and is written back at the end.
        rng = random.Random(os.urandom(8))
        getrandbits = rng.getrandbits
        pack_id = struct.Struct("!H").pack
        monotonic = time.monotonic
        heappush, heappop = heapq.heappush, heapq.heappop
        queue = deque(jobs)
        inflight = {}  # qid -> [name, question, sends so far, first send time]
        timers = []  # heap of (expiry, qid, sends so far)
        truncated = []
        result = self.result
        resolved, failed = result.resolved, result.failed
        nsocks = len(socks)
        first = socks[0]
        deadline, silence, max_window, max_rto = self.deadline, self.silence, self.max_window, self.max_rto
        window, ssthresh, rto, srtt, rttvar = self.window, self.ssthresh, self.rto, self.srtt, self.rttvar
        last_cut = 0.0
        replies = 0
        last_reply = monotonic()
        sent = 0

        while queue or inflight:
            now = monotonic()
            if now >= deadline or now - last_reply > silence:
                break
            while queue and len(inflight) < window:
                name, question = queue.popleft()
                qid = getrandbits(16)
                while qid in inflight:
                    qid = getrandbits(16)
                inflight[qid] = [name, question, 1, now]
                sent += 1
                try:
                    first.send(pack_id(qid) + _QUERY_FLAGS + question)
                except OSError:
                    pass  # a full buffer or an ICMP error: lost, retransmitted on its timer
                heappush(timers, (now + rto, qid, 1))
            wait = max(0.0, min(timers[0][0], deadline) - monotonic()) if timers else 0.0
            events = sel.select(wait)
            now = monotonic()
            for key, _ in events:
                s = key.fileobj
                while True:
                    try:
                        data = s.recv(65535)
                    except OSError:  # drained (EAGAIN), or an ICMP error: no answer
                        break
                    if len(data) < 12:
                        continue
                    qid = (data[0] << 8) | data[1]
                    entry = inflight.get(qid)
                    if entry is None:
                        continue  # late duplicate or stray
                    got = _parse_reply(data, qid, entry[1])
                    if got is None:
                        continue
                    del inflight[qid]
                    replies += 1
                    last_reply = now
                    if entry[2] == 1 and not replies & 7:
                        # RFC 6298 estimator, from queries sent once (Karn), one sample in eight.
                        rtt = now - entry[3]
                        if srtt is None:
                            srtt, rttvar = rtt, rtt / 2
                        else:
                            rttvar = 0.75 * rttvar + 0.25 * abs(srtt - rtt)
                            srtt = 0.875 * srtt + 0.125 * rtt
                        rto = min(max_rto, max(self.MIN_RTO, srtt + 4 * rttvar))
                    if window < max_window:
                        window += 1.0 if window < ssthresh else 1.0 / window
                    status, ip = got
                    if status == "ok":
                        resolved[entry[0]] = ip
                    elif status == "tc":
                        truncated.append((entry[0], entry[1]))
                    else:
                        failed[entry[0]] = status
            while timers and timers[0][0] <= now:
                _, qid, sends = heappop(timers)
                entry = inflight.get(qid)
                if entry is None or entry[2] != sends:
                    continue  # answered meanwhile
                if now - last_cut > (srtt or rto):
                    last_cut = now  # one cut per loss event, not per lost query
                    ssthresh = window = max(8.0, window / 2)
                if sends >= self.tries:
                    del inflight[qid]
                    failed.setdefault(entry[0], NO_REPLY)
                    continue
                entry[2] = sends + 1
                sent += 1
                try:
                    socks[sends % nsocks].send(pack_id(qid) + _QUERY_FLAGS + entry[1])
                except OSError:
                    pass
                heappush(timers, (now + min(max_rto, rto * (2**sends)), qid, sends + 1))
        # Whatever is left was cut short: by the silence (no reply, truly), or by
        # the deadline (no verdict: an earlier answer stays the one reported).
        silent = monotonic() < deadline
        for entry in inflight.values():
            failed.setdefault(entry[0], NO_REPLY if silent else NOT_ASKED)
        for name, _ in queue:
            failed.setdefault(name, NOT_ASKED)
        for name in resolved:
            failed.pop(name, None)  # answered after all (a late reply to an earlier try)
        result.queries += sent
        result.replies += replies
        self.window, self.ssthresh, self.rto, self.srtt, self.rttvar = window, ssthresh, rto, srtt, rttvar
        return truncated


def _tcp_phase(name, question, servers, result, timeout, deadline):
    """A truncated answer: ask again over TCP, each server in turn (rare, so one at a time)."""
    for server in servers:
        budget = min(timeout, deadline - time.monotonic())
        if budget <= 0:
            break
        result.queries += 1
        try:
            got = _tcp_query(server, random.getrandbits(16), question, budget)
        except OSError:
            continue
        if got is None:
            continue
        result.replies += 1
        status, ip = got
        if status == "ok":
            result.resolved[name] = ip
            result.failed.pop(name, None)
            return
        result.failed[name] = status if status != "tc" else "truncated over TCP"
        if status != "SERVFAIL":
            return
    result.failed.setdefault(name, NO_REPLY)


# --- waiting -----------------------------------------------------------------------


class _Progress:
    """At most one log line per `interval` seconds."""

    def __init__(self, interval: float, total: int):
        self.interval = interval
        self.total = total
        self.last = time.monotonic()

    def maybe(self, verb: str, done: int, missing) -> None:
        now = time.monotonic()
        if self.interval is not None and now - self.last >= self.interval:
            self.last = now
            log.info("%s %d/%d; waiting for %s", verb, done, self.total, first_few(sorted(missing)))


def _by_status(failed: dict) -> str:
    groups: dict[str, list] = {}
    for name, status in failed.items():
        groups.setdefault(status, []).append(name)
    return "; ".join(f"{status}: {first_few(sorted(names), 3)}" for status, names in sorted(groups.items()))


def _until_done(attempt, deadline: float, timeout: float, max_backoff: float):
    """attempt() in rounds until it returns a falsy value or the deadline passes.

    The first round runs before tenacity is imported: in a pod whose peers already resolve
    (the common start) the retry machinery would cost more than the wait itself."""
    first = attempt()
    if not first:
        return first
    pending = [first]

    def again():  # tenacity's first try is the round already made
        return pending.pop() if pending else attempt()

    return _retrying(deadline, timeout, max_backoff)(again)


def _retrying(deadline: float, timeout: float, max_backoff: float):
    """Rounds until the attempt returns a falsy value or the deadline passes."""
    import tenacity

    try:
        backoff = tenacity.wait_exponential_jitter(multiplier=0.1, max=max_backoff, jitter=0.5)
    except TypeError:  # tenacity < 9 calls the multiplier `initial`
        backoff = tenacity.wait_exponential_jitter(initial=0.1, max=max_backoff, jitter=0.5)

    def wait(state):  # never sleep past the deadline
        return max(0.0, min(backoff(state), deadline - time.monotonic()))

    return tenacity.Retrying(
        stop=tenacity.stop_after_delay(timeout),
        wait=wait,
        retry=tenacity.retry_if_result(bool),
        retry_error_callback=lambda state: state.outcome.result(),
    )


def _normalize_servers(nameservers):
    """None -> the system's; else [(ip, port)] or ['ip[:port]'] -> [(ip, port)]."""
    if nameservers is None:
        return system_nameservers()
    servers = []
    for s in nameservers:
        try:
            servers.append(parse_one(s) if isinstance(s, str) else (str(s[0]), int(s[1])))
        except (ValueError, TypeError, IndexError):
            raise ConfigError(f"nameserver {s!r}: expected 'ip[:port]' or (ip, port)") from None
    return servers


def wait_for_hosts(
    names,
    *,
    port: int | None = None,
    timeout: float = 300.0,
    nameservers=None,
    progress_interval: float | None = 5.0,
    max_backoff: float = 3.0,
    family: str = "auto",
) -> dict[str, str]:
    """Block until every name has an address (and accepts TCP on `port`); return {name: ip}.

    `family`: the pod's own address family ("ipv4": A records, "ipv6": AAAA, "auto":
    A, else AAAA; `family_of(pod_ip)` picks it).

    `nameservers`: [(ip, port)] or ['ip[:port]'], default JOBSET_RUNTIME_NAMESERVERS
    else /etc/resolv.conf.  Raises PeersTimeout naming what is missing once
    `timeout` seconds have passed, or DnsUnavailable (a PeersTimeout) if no DNS
    server answered at all.
    """
    names = list(dict.fromkeys(names))
    servers = _normalize_servers(nameservers)
    start = time.monotonic()
    deadline = start + timeout
    progress = _Progress(progress_interval, len(names))
    resolved: dict[str, str] = {}
    failed: dict[str, str] = {}
    totals = {"replies": 0, "queries": 0}
    warned: list = []

    def dns_round():
        pending = [n for n in names if n not in resolved]
        got = resolve_batch(pending, servers, deadline=deadline, family=family)
        resolved.update(got.resolved)
        for n in got.resolved:
            failed.pop(n, None)
        failed.update((n, st) for n, st in got.failed.items() if st != NOT_ASKED or n not in failed)
        totals["replies"] += got.replies
        totals["queries"] += got.queries
        missing = [n for n in names if n not in resolved]
        if missing:
            if totals["replies"] == 0 and totals["queries"] and not warned:
                warned.append(True)  # once: the final error says it again
                log.warning("no answer yet from DNS server %s", ", ".join(map(format_nameserver, servers)))
            progress.maybe("resolved", len(names) - len(missing), missing)
        return missing

    missing = _until_done(dns_round, deadline, timeout, max_backoff) if names else []
    asked = ", ".join(map(format_nameserver, servers))
    if missing:
        if totals["replies"] == 0 and totals["queries"]:
            raise DnsUnavailable(
                f"DNS server{'s' if len(servers) > 1 else ''} {asked} never answered ({totals['queries']} queries over {timeout:g}s); "
                f"check JOBSET_RUNTIME_NAMESERVERS or the nameserver lines of /etc/resolv.conf"
            )
        raise PeersTimeout(
            f"timed out after {timeout:g}s waiting for {len(missing)} of {len(names)} hosts to resolve "
            f"(DNS {_RECORDS[family]} records, asked {asked}): {first_few(missing)}; last answers: "
            f"{_by_status({n: _verdict(failed.get(n)) for n in missing})}"
        )
    result = {n: resolved[n] for n in names}
    if port is None:
        return result
    return wait_for_ports(result, port, deadline=deadline, nameservers=servers, progress=progress,
                          max_backoff=max_backoff, timeout=timeout, start=start, family=family)


_RECORDS = {"ipv4": "A", "ipv6": "AAAA", "auto": "A or AAAA"}


def _verdict(status: str | None) -> str:
    return NO_REPLY if status in (None, NOT_ASKED) else status


_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, no TIME_WAIT
_CONNECT_ERRORS = {
    errno.ECONNREFUSED: "connection refused",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "timed out",
}


def connect_batch(addresses: dict, port: int, *, timeout: float = 2.0, window: int = 256) -> dict[str, str]:
    """Try one TCP connection to (ip, port) for every {name: ip}, concurrently.

    Returns {name: error} for the names that did not accept; connections that
    succeed are closed at once (nothing is sent), by a reset (SO_LINGER 0) rather
    than a FIN: a probe then leaves no TIME_WAIT socket behind holding an ephemeral
    port for a minute.  An MPI launcher probes 12,736 workers and then opens a
    channel to each: with the probes in TIME_WAIT, that is 25,472 of the 28,232
    ports of Linux's default range, and every connect() searches longer for a free
    one (the kubelet's probes do the same for the same reason: kubernetes#115143).
    """
    errors: dict[str, str] = {}
    queue = deque(addresses.items())
    sel = selectors.DefaultSelector()
    open_: dict[socket.socket, tuple[str, float]] = {}
    try:
        while queue or open_:
            now = time.monotonic()
            while queue and len(open_) < window:
                name, ip = queue.popleft()
                s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                rc = s.connect_ex((ip, port))
                if rc in (0, errno.EINPROGRESS):
                    open_[s] = (name, now + timeout)
                    sel.register(s, selectors.EVENT_WRITE)
                else:
                    errors[name] = _CONNECT_ERRORS.get(rc, os.strerror(rc))
                    s.close()
            wait = max(0.0, min(exp for _, exp in open_.values()) - time.monotonic()) if open_ else 0.0
            for key, _ in sel.select(wait):
                s = key.fileobj
                name, _ = open_.pop(s)
                sel.unregister(s)
                rc = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if rc:
                    errors[name] = _CONNECT_ERRORS.get(rc, os.strerror(rc))
                else:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
                s.close()
            now = time.monotonic()
            for s, (name, exp) in list(open_.items()):
                if exp <= now:
                    errors[name] = "timed out"
                    del open_[s]
                    sel.unregister(s)
                    s.close()
    finally:
        for s in open_:
            s.close()
        sel.close()
    return errors


def wait_for_ports(
    addresses: dict,
    port: int,
    *,
    deadline: float | None = None,
    timeout: float = 300.0,
    nameservers=None,
    progress=None,
    max_backoff: float = 3.0,
    start: float | None = None,
    progress_interval: float | None = 5.0,
    family: str = "auto",
) -> dict[str, str]:
    """Block until every {name: ip} accepts TCP on `port`; return the {name: ip} that did.

    A name whose connection fails is resolved again before the next round, so a
    pod recreated with a new IP is found at its new address.
    """
    start = time.monotonic() if start is None else start
    deadline = start + timeout if deadline is None else deadline
    servers = None
    current = dict(addresses)
    ready: set[str] = set()
    last: dict[str, str] = {}
    progress = progress or _Progress(progress_interval, len(current))
    rounds = [0]

    def tcp_round():
        nonlocal servers
        pending = {n: ip for n, ip in current.items() if n not in ready}
        if rounds[0] and pending:
            # Re-resolve the failures: their pod may have come back elsewhere.
            if servers is None:
                servers = _normalize_servers(nameservers)
            fresh = resolve_batch([n for n in pending if not _is_ip(n)], servers, deadline=deadline, tries=3,
                                  family=family)
            current.update(fresh.resolved)
            pending = {n: current[n] for n in pending}
        rounds[0] += 1
        budget = max(0.05, min(2.0, deadline - time.monotonic()))
        errors = connect_batch(pending, port, timeout=budget)
        ready.update(n for n in pending if n not in errors)
        last.clear()
        last.update(errors)
        missing = [n for n in current if n not in ready]
        if missing:
            progress.maybe(f"port {port} open on", len(current) - len(missing), missing)
        return missing

    remaining = max(0.0, deadline - time.monotonic())
    missing = _until_done(tcp_round, deadline, remaining, max_backoff) if current else []
    if missing:
        raise PeersTimeout(
            f"timed out after {deadline - start:g}s waiting for {len(missing)} of {len(current)} hosts "
            f"to accept TCP connections on port {port}: {first_few(missing)}; last errors: "
            f"{_by_status({n: last.get(n, 'not tried') for n in missing})}"
        )
    return current


def _is_ip(text: str) -> bool:
    return _ip_literal(text) is not None
