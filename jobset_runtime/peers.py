"""Wait until peers exist: their hostnames resolve (DNS A) and, optionally, a TCP port accepts.

Cluster DNS is late and flaky for new pods (records late by seconds to ~30 s,
flapping NXDOMAIN, old IPs after a restart: kubernetes/kubernetes#117819,
#127259), and a large JobSet has thousands of names.  So:

* `resolve_batch` asks for many names at once: one connected non-blocking UDP
  socket per server, a window of queries in flight, query wire made from a
  precomputed name, replies matched on id AND question, per-query
  retransmission (a lost datagram costs one name one retry, not a round), and
  truncated (TC) answers asked again over TCP.  Replies are parsed by hand:
  only the header, the question and the A records of the answer section.
* `wait_for_hosts` repeats rounds for the names still missing (NXDOMAIN,
  SERVFAIL, no data, no reply) with tenacity's exponential backoff and jitter
  under one deadline, then connects to `port` on every address the same way,
  re-resolving names whose connection fails (their pod may have a new IP).

Only the standard library at module level; tenacity is imported when waiting.
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

from .errors import ConfigError, PeersTimeout, first_few
from .nameservers import Nameserver, format_nameserver, parse_one, system_nameservers

log = logging.getLogger("jobset_runtime.peers")

__all__ = ["BatchResult", "resolve_batch", "wait_for_hosts", "wait_for_ports", "NO_REPLY"]

NO_REPLY = "no reply"
NODATA = "no A record"
NOT_ASKED = "not asked"  # the batch ended (deadline, silent servers) before this name was sent
_RCODES = {1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
# id | flags RD | QDCOUNT 1 | AN/NS/AR 0 -- the id is prepended per query.
_QUERY_FLAGS = b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
_QTYPE_A_IN = b"\x00\x01\x00\x01"
_HEADER = struct.Struct("!HHHH")
_RR = struct.Struct("!HHIH")
_TC, _QR = 0x0200, 0x8000


def _qname_wire(name: str) -> bytes:
    """`a.b.c` -> wire labels, lower case (the reply's question is compared case-blind)."""
    labels = name.rstrip(".").lower().split(".")
    out = bytearray()
    for label in labels:
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(name)
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise ValueError(name)
    return bytes(out)


def _first_a(data: bytes, off: int, ancount: int) -> str | None:
    """The first IN A address in the answer section starting at `off`, or None.

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
            if rtype == 1 and rclass == 1 and rdlen == 4 and off + 4 <= len(data):
                return "%d.%d.%d.%d" % tuple(data[off : off + 4])
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
    ip = _first_a(data, end, ancount)
    return ("ok", ip) if ip else (NODATA, None)


@dataclass
class BatchResult:
    """What one batch learnt: addresses, and the last answer for every name without one."""

    resolved: dict = field(default_factory=dict)  # name -> IPv4 address
    failed: dict = field(default_factory=dict)  # name -> NXDOMAIN | SERVFAIL | no A record | no reply | ...
    replies: int = 0  # answers received (any rcode): 0 means no server ever answered
    queries: int = 0  # datagrams and TCP queries sent


def _server_socket(server: Nameserver, kind=socket.SOCK_DGRAM) -> socket.socket:
    ip, port = server
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    s = socket.socket(family, kind)
    return s


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
) -> BatchResult:
    """Ask for the A record of every name once (with retransmissions); no waiting between rounds.

    `names`: absolute hostnames (trailing dot optional); IP literals resolve to
    themselves.  `nameservers`: [(ip, port)] or ['ip[:port]']; retransmissions
    go to the next server in turn.  A query unanswered after the retransmission
    timeout (from the measured round trip, doubled per try, at most `max_rto`)
    is sent again, up to `tries` sends.  The batch ends early when no server
    has answered anything for `silence` seconds, and at `deadline`
    (time.monotonic()).  Names without an A record are in `failed` with the
    last answer seen.  An invalid name raises ConfigError.
    """
    servers = [parse_one(s) if isinstance(s, str) else (s[0], int(s[1])) for s in nameservers]
    if not servers:
        raise ConfigError("no DNS server to ask: set JOBSET_RUNTIME_NAMESERVERS or a nameserver in /etc/resolv.conf")
    result = BatchResult()
    jobs = []
    for name in dict.fromkeys(names):
        try:
            result.resolved[name] = str(ipaddress.ip_address(name))
            continue
        except ValueError:
            pass
        try:
            jobs.append((name, _qname_wire(name) + _QTYPE_A_IN))
        except (ValueError, UnicodeEncodeError):
            raise ConfigError(f"{name!r} is not a valid DNS hostname (ASCII labels of 1-63 characters)") from None
    if not jobs:
        return result
    deadline = float("inf") if deadline is None else deadline
    engine = _UdpEngine(servers, result, max(1, tries), max_rto, silence, max(1, max_window), deadline)
    truncated = engine.run(jobs)
    for name, question in truncated:
        _tcp_phase(name, question, servers, result, max_rto * 2, deadline)
    return result


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

    def __init__(self, servers, result, tries, max_rto, silence, max_window, deadline):
        self.servers = servers
        self.result = result
        self.tries = tries
        self.max_rto = max_rto
        self.silence = silence
        self.max_window = max_window
        self.deadline = deadline
        self.srtt = None
        self.rttvar = 0.0
        self.rto = min(self.INITIAL_RTO, max_rto)
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

    def _sample(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = min(self.max_rto, max(self.MIN_RTO, self.srtt + 4 * self.rttvar))

    def _loop(self, jobs, socks, sel):
        rng = random.Random(os.urandom(8))
        getrandbits = rng.getrandbits
        pack_id = struct.Struct("!H").pack
        queue = deque(jobs)
        inflight = {}  # qid -> [name, question, sends so far, first send time]
        timers = []  # heap of (expiry, qid, sends so far)
        truncated = []
        result = self.result
        resolved, failed = result.resolved, result.failed
        nsocks = len(socks)
        last_reply = time.monotonic()
        sent = 0

        def send(qid, question, attempt):
            nonlocal sent
            sent += 1
            try:
                socks[attempt % nsocks].send(pack_id(qid) + _QUERY_FLAGS + question)
            except OSError:
                pass  # a full buffer or an ICMP error: lost, retransmitted on its timer

        while queue or inflight:
            now = time.monotonic()
            if now >= self.deadline or now - last_reply > self.silence:
                break
            while queue and len(inflight) < self.window:
                name, question = queue.popleft()
                qid = getrandbits(16)
                while qid in inflight:
                    qid = getrandbits(16)
                inflight[qid] = [name, question, 1, now]
                send(qid, question, 0)
                heapq.heappush(timers, (now + self.rto, qid, 1))
            wait = max(0.0, min(timers[0][0], self.deadline) - time.monotonic()) if timers else 0.0
            for key, _ in sel.select(wait):
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
                    result.replies += 1
                    last_reply = time.monotonic()
                    if entry[2] == 1:
                        self._sample(last_reply - entry[3])
                    if self.window < self.max_window:
                        self.window += 1.0 if self.window < self.ssthresh else 1.0 / self.window
                    status, ip = got
                    name = entry[0]
                    if status == "ok":
                        resolved[name] = ip
                        failed.pop(name, None)
                    elif status == "tc":
                        truncated.append((name, entry[1]))
                    else:
                        failed[name] = status
            now = time.monotonic()
            while timers and timers[0][0] <= now:
                _, qid, sends = heapq.heappop(timers)
                entry = inflight.get(qid)
                if entry is None or entry[2] != sends:
                    continue  # answered meanwhile
                if now - self.last_cut > (self.srtt or self.rto):
                    self.last_cut = now  # one cut per loss event, not per lost query
                    self.ssthresh = self.window = max(8.0, self.window / 2)
                if sends >= self.tries:
                    del inflight[qid]
                    failed.setdefault(entry[0], NO_REPLY)
                    continue
                entry[2] = sends + 1
                send(qid, entry[1], sends)
                heapq.heappush(timers, (now + min(self.max_rto, self.rto * (2**sends)), qid, sends + 1))
        # Whatever is left was cut short by the deadline or the silence.
        for entry in inflight.values():
            failed.setdefault(entry[0], NO_REPLY)
        for name, _ in queue:
            failed.setdefault(name, NOT_ASKED)
        result.queries += sent
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


def _retrying(deadline: float, timeout: float, max_backoff: float):
    """Rounds until the attempt returns a falsy value or the deadline passes."""
    import tenacity

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
    if nameservers is None:
        return system_nameservers()
    return [parse_one(s) if isinstance(s, str) else (s[0], int(s[1])) for s in nameservers]


def wait_for_hosts(
    names,
    *,
    port: int | None = None,
    timeout: float = 300.0,
    nameservers=None,
    progress_interval: float | None = 5.0,
    max_backoff: float = 3.0,
) -> dict[str, str]:
    """Block until every name has an A record (and accepts TCP on `port`); return {name: ip}.

    `nameservers`: [(ip, port)] or ['ip[:port]'], default JOBSET_RUNTIME_NAMESERVERS
    else /etc/resolv.conf.  Raises PeersTimeout naming what is missing once
    `timeout` seconds have passed, or ConfigError if no DNS server answered at all.
    """
    names = list(dict.fromkeys(names))
    servers = _normalize_servers(nameservers)
    start = time.monotonic()
    deadline = start + timeout
    progress = _Progress(progress_interval, len(names))
    resolved: dict[str, str] = {}
    failed: dict[str, str] = {}
    totals = {"replies": 0, "queries": 0}

    def dns_round():
        pending = [n for n in names if n not in resolved]
        got = resolve_batch(pending, servers, deadline=deadline)
        resolved.update(got.resolved)
        for n in got.resolved:
            failed.pop(n, None)
        failed.update((n, st) for n, st in got.failed.items() if st != NOT_ASKED or n not in failed)
        totals["replies"] += got.replies
        totals["queries"] += got.queries
        missing = [n for n in names if n not in resolved]
        if missing:
            if totals["replies"] == 0 and totals["queries"]:
                log.warning("no answer yet from DNS server %s", ", ".join(map(format_nameserver, servers)))
            progress.maybe("resolved", len(names) - len(missing), missing)
        return missing

    missing = _retrying(deadline, timeout, max_backoff)(dns_round) if names else []
    asked = ", ".join(map(format_nameserver, servers))
    if missing:
        if totals["replies"] == 0 and totals["queries"]:
            raise ConfigError(
                f"DNS server {asked} never answered ({totals['queries']} queries over {timeout:g}s); "
                f"check JOBSET_RUNTIME_NAMESERVERS or the nameserver lines of /etc/resolv.conf"
            )
        raise PeersTimeout(
            f"timed out after {timeout:g}s waiting for {len(missing)} of {len(names)} hosts to resolve "
            f"(DNS A records, asked {asked}): {first_few(missing)}; last answers: "
            f"{_by_status({n: failed.get(n, NO_REPLY) for n in missing})}"
        )
    result = {n: resolved[n] for n in names}
    if port is None:
        return result
    return wait_for_ports(result, port, deadline=deadline, nameservers=servers, progress=progress,
                          max_backoff=max_backoff, timeout=timeout, start=start)


_CONNECT_ERRORS = {
    errno.ECONNREFUSED: "connection refused",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "timed out",
}


def connect_batch(addresses: dict, port: int, *, timeout: float = 2.0, window: int = 256) -> dict[str, str]:
    """Try one TCP connection to (ip, port) for every {name: ip}, concurrently.

    Returns {name: error} for the names that did not accept; connections that
    succeed are closed at once (nothing is sent).
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
            fresh = resolve_batch([n for n in pending if not _is_ip(n)], servers, deadline=deadline, tries=3)
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
    missing = _retrying(deadline, remaining, max_backoff)(tcp_round) if current else []
    if missing:
        raise PeersTimeout(
            f"timed out after {deadline - start:g}s waiting for {len(missing)} of {len(current)} hosts "
            f"to accept TCP connections on port {port}: {first_few(missing)}; last errors: "
            f"{_by_status({n: last.get(n, 'not tried') for n in missing})}"
        )
    return current


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False
