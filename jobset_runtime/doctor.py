"""`jobset-runtime doctor`: what is wrong with this pod's environment, from inside the pod.

The pod's view of the problems that cost teams days ("the cave of debugging"): a
node-local DNS cache answering NXDOMAIN for pods that exist, an interface MTU that
drops large packets, Secrets the container's user cannot read, clocks apart.

Three layers, as everywhere in the project:
  gather(env) -> Facts        I/O: files, interfaces, DNS queries, an ICMP timestamp
  checks(facts) -> [Check]    pure: each check reads facts and says ok, warn, fail or skip
  render_text / render_json   the report

A check fails (exit 1) only on what stops a JobSet from coming up; a warning names a
risk with its fix.  Standard library only, plus the runtime's own modules.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import os
import socket
import struct
import time
from dataclasses import dataclass, field

from . import contract
from .errors import ConfigError

# RFC 8200 5: every IPv6 link carries 1280 bytes; below it an interface is misconfigured.
MIN_MTU = 1280
ETHERNET_MTU = 1500
# NodeLocal DNSCache listens on a link-local address, 169.254.20.10 by default
# (kubernetes/kubernetes cluster/addons/dns/nodelocaldns); a cache there keeps a
# name's NXDOMAIN for up to 30 s (jax-ml/jax#28283).
LINK_LOCAL = ipaddress.ip_network("169.254.0.0/16")
NODE_LOCAL_DNS = "169.254.20.10"
CLOCK_WARN_S = 1.0
DNS_TIMEOUT_S = 2.0


class Status(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    summary: str
    details: tuple = ()
    fix: str | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status.value, "summary": self.summary,
                "details": list(self.details), "fix": self.fix}


@dataclass(frozen=True)
class ResolvConf:
    nameservers: tuple = ()
    search: tuple = ()
    ndots: int = 1  # resolv.conf(5)'s default

    @classmethod
    def parse(cls, text: str) -> ResolvConf:
        servers, search, ndots = [], [], 1
        for line in text.splitlines():
            parts = line.split()
            if not parts or parts[0].startswith(("#", ";")):
                continue
            if parts[0] == "nameserver" and len(parts) > 1:
                servers.append(parts[1])
            elif parts[0] in ("search", "domain"):
                search = parts[1:]  # the last search/domain line wins (resolv.conf(5))
            elif parts[0] == "options":
                for opt in parts[1:]:
                    name, _, value = opt.partition(":")
                    if name == "ndots" and value.isdigit():
                        ndots = min(int(value), 15)
        return cls(tuple(servers), tuple(search), ndots)


@dataclass(frozen=True)
class Answer:
    """One server's answer for one name: `status` is ok, NXDOMAIN, SERVFAIL, no reply, ..."""

    server: str
    status: str
    ip: str | None = None


@dataclass
class Facts:
    """Everything the checks look at, gathered once."""

    uid: int = 0
    gid: int = 0
    identity: object = None             # identity.Identity, None when it cannot be derived
    identity_error: str | None = None
    sources: list = field(default_factory=list)   # [(field, value, where from)]
    resolv_conf: str | None = None      # the file's text; None when missing
    env_nameservers: str = ""           # JOBSET_RUNTIME_NAMESERVERS
    nameservers_error: str | None = None  # why JOBSET_RUNTIME_NAMESERVERS does not parse
    route_interface: str | None = None  # the interface of the default route
    mtus: dict = field(default_factory=dict)      # interface -> MTU (loopback left out)
    lookups: dict = field(default_factory=dict)   # fqdn -> [Answer]
    secrets: dict = field(default_factory=dict)   # what -> (path, None | "missing" | error text)
    clock: tuple | None = None          # ("ok", offset seconds, rtt) | ("skip", why)


# --- the checks (pure) -----------------------------------------------------------------

def checks(f: Facts) -> list[Check]:
    return [check_identity(f), check_resolv_conf(f), check_mtu(f), *check_dns(f), check_secrets(f), check_clock(f)]


def check_identity(f: Facts) -> Check:
    details = tuple(f"{name} = {value}  ({source})" for name, value, source in f.sources)
    if f.identity is None:
        return Check("identity", Status.FAIL, f.identity_error or "no pod metadata", details,
                     "mount the downward-API volume and set JOBSET_RUNTIME_TOPOLOGY (generated manifests do)")
    d = f.identity.to_dict()
    rank = f"rank {d['rank']} of {d['world_size']}" if d["rank"] is not None else "rank unknown"
    summary = f"{d['hostname']}: {rank}, coordinator {d['coordinator'] or 'unknown'}"
    if d["rank"] is None:
        return Check("identity", Status.WARN, summary, details,
                     f"set {contract.TOPOLOGY_ENV} (name:REPLICASxPODS,... in spec order) for rank and world size")
    return Check("identity", Status.OK, summary, details)


def _cache_servers(servers) -> list:
    out = []
    for s in servers:
        try:
            if ipaddress.ip_address(s) in LINK_LOCAL:
                out.append(s)
        except ValueError:
            pass
    return out


def check_resolv_conf(f: Facts) -> Check:
    if f.nameservers_error:
        return Check("resolv.conf", Status.FAIL, f.nameservers_error,
                     fix=f"write {contract.NAMESERVERS_ENV} as ip[:port],... or unset it")
    if f.resolv_conf is None:
        return Check("resolv.conf", Status.FAIL, f"{contract.RESOLV_CONF} is missing: nothing resolves by name",
                     fix="run in a pod (the kubelet writes it) or set JOBSET_RUNTIME_NAMESERVERS")
    rc = ResolvConf.parse(f.resolv_conf)
    details = [f"nameservers: {', '.join(rc.nameservers) or '(none: 127.0.0.1)'}",
               f"search: {' '.join(rc.search) or '(none)'}", f"ndots: {rc.ndots}"]
    if f.env_nameservers.strip():
        details.append(f"{contract.NAMESERVERS_ENV}={f.env_nameservers} (the runtime's own lookups ask these)")
    caches = _cache_servers(rc.nameservers)
    summary = f"{len(rc.nameservers)} nameserver(s), ndots {rc.ndots}, {len(rc.search)} search domain(s)"
    if caches and not f.env_nameservers.strip():
        return Check("resolv.conf", Status.WARN,
                     summary + f"; a node-local DNS cache is in the path ({', '.join(caches)})",
                     (*details, "a cache keeps NXDOMAIN for a name asked before its pod's record exists "
                                "(up to 30 s with NodeLocal DNSCache): new peers look missing"),
                     f"set {contract.NAMESERVERS_ENV}=<cluster DNS Service IP> so the runtime asks cluster DNS "
                     "directly, or lower the cache's negative TTL (node-local-dns Corefile: `denial` in "
                     "the cluster.local cache block)")
    return Check("resolv.conf", Status.OK, summary + (f"; node-local cache {', '.join(caches)} bypassed by "
                                                      f"{contract.NAMESERVERS_ENV}" if caches else ""),
                 tuple(details))


def check_mtu(f: Facts) -> Check:
    if not f.mtus:
        return Check("mtu", Status.SKIP, "no network interface besides loopback")
    iface = f.route_interface if f.route_interface in f.mtus else sorted(f.mtus)[0]
    mtu = f.mtus[iface]
    details = tuple(f"{name}: mtu {m}" for name, m in sorted(f.mtus.items()))
    if mtu < MIN_MTU:
        return Check("mtu", Status.FAIL, f"{iface} has MTU {mtu}, below {MIN_MTU}", details,
                     f"packets over {mtu} bytes fragment or, where ICMP is filtered, vanish: collectives and "
                     "large RPCs hang with no error. Set the CNI's / node pool's MTU (1460 on GCP's default "
                     f"VPC, {ETHERNET_MTU} on plain Ethernet) so every pod and node agrees")
    if mtu < ETHERNET_MTU:
        return Check("mtu", Status.OK, f"{iface} MTU {mtu} (below Ethernet's {ETHERNET_MTU}: an overlay or "
                     "a cloud VPC; fine when every node agrees)", details)
    return Check("mtu", Status.OK, f"{iface} MTU {mtu}", details)


def _describe(answers) -> list:
    return [f"{a.server}: {a.ip if a.status == 'ok' else a.status}" for a in answers]


def check_dns(f: Facts) -> list[Check]:
    ident = f.identity
    if ident is None:
        return [Check("dns", Status.SKIP, "identity unknown: no names to look up")]
    out = []
    try:
        own = ident.fqdn()
    except ConfigError as e:
        return [Check("dns", Status.FAIL, str(e))]
    out.append(_name_check("dns.self", own, f.lookups.get(own, []), expect=ident.pod_ip))
    if ident.coordinator_host and ident.coordinator_host != ident.hostname:
        coord = ident.fqdn(ident.coordinator_host)
        out.append(_name_check("dns.coordinator", coord, f.lookups.get(coord, []), expect=None))
    return out


def _name_check(name: str, fqdn: str, answers: list, expect: str | None) -> Check:
    details = tuple(_describe(answers))
    if not answers:
        return Check(name, Status.SKIP, f"{fqdn}: no DNS server to ask")
    found = {a.ip for a in answers if a.status == "ok"}
    negative = [a for a in answers if a.status != "ok"]
    if found and negative:
        bad = negative[0]
        cache = " (a node-local cache)" if _cache_servers([bad.server.rpartition(":")[0]]) else ""
        return Check(name, Status.FAIL,
                     f"{fqdn}: {bad.server}{cache} answers {bad.status} while "
                     f"{next(a.server for a in answers if a.status == 'ok')} has {', '.join(sorted(found))}",
                     details,
                     f"{bad.server} keeps a stale negative answer: set {contract.NAMESERVERS_ENV} to a server "
                     "that has the record (the cluster DNS Service IP), or lower the cache's negative TTL")
    if not found:
        statuses = sorted({a.status for a in answers})
        caches = _cache_servers([a.server.rpartition(":")[0] for a in answers])
        fix = ("the record is missing: check the JobSet's headless Service (spec.network.enableDNSHostnames, "
               "publishNotReadyAddresses) and that the pod is running; records can lag a new pod by seconds "
               "(kubernetes/kubernetes#117819)")
        if caches:
            fix = (f"only the node-local cache {', '.join(caches)} was asked, and it may hold a stale NXDOMAIN: "
                   f"set {contract.NAMESERVERS_ENV}=<cluster DNS Service IP> to see what cluster DNS says; " + fix)
        return Check(name, Status.FAIL, f"{fqdn} does not resolve ({', '.join(statuses)})", details, fix)
    if expect and found != {expect}:
        return Check(name, Status.FAIL, f"{fqdn} resolves to {', '.join(sorted(found))}, not this pod's {expect}",
                     details, "a stale record from an earlier pod with this hostname (kubernetes/kubernetes"
                     "#127259): wait for cluster DNS to catch up, or lower its cache TTL")
    return Check(name, Status.OK, f"{fqdn} -> {', '.join(sorted(found))}", details)


def check_secrets(f: Facts) -> Check:
    mounted = {what: v for what, v in f.secrets.items() if v[1] != "missing"}
    if not mounted:
        return Check("secrets", Status.SKIP, "no group token or ssh Secret mounted",
                     tuple(f"{what}: {path} (not mounted)" for what, (path, _) in sorted(f.secrets.items())))
    details = tuple(f"{what}: {path}: {err or 'readable'}" for what, (path, err) in sorted(mounted.items()))
    bad = {what: v for what, v in mounted.items() if v[1]}
    if bad:
        what, (path, err) = sorted(bad.items())[0]
        return Check("secrets", Status.FAIL, f"{what} at {path} is not readable by uid {f.uid} (gid {f.gid}): {err}",
                     details, "give the pod securityContext.fsGroup = the container user's group and the "
                     "Secret volume a defaultMode that group can read (0440), as generated manifests do")
    return Check("secrets", Status.OK, f"{', '.join(sorted(mounted))} readable by uid {f.uid}", details)


def check_clock(f: Facts) -> Check:
    if f.clock is None or f.clock[0] == "skip":
        return Check("clock", Status.SKIP, f.clock[1] if f.clock else "not measured")
    _, offset, rtt = f.clock
    summary = f"offset to the coordinator {offset * 1000:+.0f} ms (round trip {rtt * 1000:.1f} ms)"
    if abs(offset) > CLOCK_WARN_S + rtt:
        return Check("clock", Status.WARN, summary, (),
                     "the nodes' clocks disagree: logs interleave wrongly and certificates or tokens with "
                     "lifetimes can be refused; check the node's time sync (chrony / systemd-timesyncd)")
    return Check("clock", Status.OK, summary)


# --- the report ------------------------------------------------------------------------

def exit_code(results: list[Check]) -> int:
    return 1 if any(c.status is Status.FAIL for c in results) else 0


def render_json(results: list[Check]) -> str:
    return json.dumps({"ok": exit_code(results) == 0, "checks": [c.to_dict() for c in results]}, indent=2)


def render_text(results: list[Check]) -> str:
    lines = []
    for c in results:
        lines.append(f"{c.status.value.upper() if c.status is Status.FAIL else c.status.value:5} "
                     f"{c.name:16} {c.summary}")
        lines += [f"{'':22}{d}" for d in c.details]
        if c.fix and c.status in (Status.FAIL, Status.WARN):
            lines.append(f"{'':22}fix: {c.fix}")
    failed = [c.name for c in results if c.status is Status.FAIL]
    lines.append(f"{len(failed)} check(s) failed: {', '.join(failed)}" if failed else "all checks passed")
    return "\n".join(lines) + "\n"


# --- gathering (I/O) -------------------------------------------------------------------

def _identity_sources(meta) -> list:
    from .identity import source_of

    rows = []
    for name in contract.IDENTITY_ENV:
        value, source = source_of(meta, name)
        if value is not None:
            rows.append((name, value, source))
    if meta.namespace and not any(r[0] == "namespace" for r in rows):
        rows.append(("namespace", meta.namespace, f"downward-API file {contract.PODINFO_NAMESPACE}"))
    topo = meta.env.get(contract.TOPOLOGY_ENV)
    if topo:
        rows.append(("topology", topo, f"env {contract.TOPOLOGY_ENV}"))
    if meta.env.get(contract.POD_IP_ENV):
        rows.append(("pod_ip", meta.env[contract.POD_IP_ENV], f"env {contract.POD_IP_ENV}"))
    return rows


def _interfaces(sys_net: str = "/sys/class/net") -> dict:
    out = {}
    try:
        names = os.listdir(sys_net)
    except OSError:
        return out
    for name in names:
        try:
            with open(os.path.join(sys_net, name, "mtu")) as fh:
                mtu = int(fh.read().strip())
            with open(os.path.join(sys_net, name, "flags")) as fh:
                loopback = int(fh.read().strip(), 16) & 0x8  # IFF_LOOPBACK
        except (OSError, ValueError):
            continue
        if not loopback:
            out[name] = mtu
    return out


def _default_route(route_file: str = "/proc/net/route") -> str | None:
    try:
        with open(route_file) as fh:
            for line in fh.readlines()[1:]:
                parts = line.split()
                if len(parts) > 2 and parts[1] == "00000000":
                    return parts[0]
    except OSError:
        pass
    return None


def _lookups(names: list, servers: list) -> dict:
    """Ask each server on its own, so a cache and cluster DNS can be told apart."""
    from . import peers
    from .nameservers import format_nameserver

    out = {n: [] for n in names}
    for server in servers:
        label = format_nameserver(server)
        try:
            result = peers.resolve_batch(names, [server], tries=3, max_rto=0.5, silence=DNS_TIMEOUT_S,
                                         deadline=time.monotonic() + DNS_TIMEOUT_S * 2)
        except (ConfigError, OSError) as e:
            for n in names:
                out[n].append(Answer(label, f"error: {e}"))
            continue
        for n in names:
            if n in result.resolved:
                out[n].append(Answer(label, "ok", result.resolved[n]))
            else:
                out[n].append(Answer(label, result.failed.get(n, "no reply")))
    return out


def _readable(path: str) -> str | None:
    """None when this user can read the file; "missing"; or why not."""
    if not os.path.lexists(path):
        return "missing"
    try:
        with open(path, "rb") as fh:
            fh.read(1)
        return None
    except OSError as e:
        return e.strerror or str(e)


ICMP_TIMESTAMP, ICMP_TIMESTAMP_REPLY = 13, 14


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _ms_since_midnight_utc(t: float) -> int:
    return int((t % 86400) * 1000)


def icmp_clock_offset(ip: str, timeout: float = 1.0, tries: int = 3) -> tuple:
    """The peer kernel's clock minus ours, from ICMP timestamp messages (RFC 792): Linux
    answers them itself (net/ipv4/icmp.c icmp_timestamp), so nothing needs to run on the
    coordinator.  Millisecond resolution; needs a raw socket (CAP_NET_RAW)."""
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    except PermissionError:
        return ("skip", "not measured: ICMP timestamps need CAP_NET_RAW in the container")
    except OSError as e:
        return ("skip", f"not measured: {e.strerror or e}")
    best = None
    ident = os.getpid() & 0xFFFF
    with sock:
        sock.settimeout(timeout)
        for seq in range(tries):
            t0 = time.time()
            body = struct.pack("!HHIII", ident, seq, _ms_since_midnight_utc(t0), 0, 0)
            header = struct.pack("!BBH", ICMP_TIMESTAMP, 0, 0)
            packet = struct.pack("!BBH", ICMP_TIMESTAMP, 0, _checksum(header + body)) + body
            try:
                sock.sendto(packet, (ip, 0))
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    data, _ = sock.recvfrom(1024)
                    t1 = time.time()
                    ihl = (data[0] & 0xF) * 4
                    icmp = data[ihl:ihl + 20]
                    if len(icmp) < 20 or icmp[0] != ICMP_TIMESTAMP_REPLY:
                        continue
                    rid, rseq, orig, recv, xmit = struct.unpack("!HHIII", icmp[4:20])
                    if rid != ident or rseq != seq or recv & 0x80000000:  # high bit: non-standard time
                        continue
                    rtt = t1 - t0
                    mid = _ms_since_midnight_utc(t0 + rtt / 2)
                    offset_ms = (recv + xmit) / 2 - mid
                    offset_ms = (offset_ms + 43_200_000) % 86_400_000 - 43_200_000  # across midnight
                    if best is None or rtt < best[2]:
                        best = ("ok", offset_ms / 1000, rtt)
                    break
            except (socket.timeout, OSError):
                continue
    return best or ("skip", f"not measured: {ip} did not answer ICMP timestamp requests")


def gather(env=None, *, resolv_conf: str = contract.RESOLV_CONF, hosts_file: str = contract.HOSTS_FILE,
           sys_net: str = "/sys/class/net", route_file: str = "/proc/net/route", clock: bool = True) -> Facts:
    from .identity import derive
    from .nameservers import parse_nameservers, parse_resolv_conf
    from .podinfo import read_pod_metadata

    env = dict(os.environ if env is None else env)
    f = Facts(uid=os.getuid(), gid=os.getgid(), env_nameservers=env.get(contract.NAMESERVERS_ENV, ""))
    try:
        meta = read_pod_metadata(env, hosts_file)
        f.sources = _identity_sources(meta)
        f.identity = derive(meta)
    except ConfigError as e:
        f.identity_error = str(e)
    try:
        with open(resolv_conf, encoding="utf-8", errors="replace") as fh:
            f.resolv_conf = fh.read()
    except OSError:
        f.resolv_conf = None
    f.mtus = _interfaces(sys_net)
    f.route_interface = _default_route(route_file)

    servers = parse_resolv_conf(f.resolv_conf or "")
    if f.env_nameservers.strip():
        try:
            extra = parse_nameservers(f.env_nameservers)
        except ConfigError as e:
            f.nameservers_error = str(e)
            extra = []
        servers = list(dict.fromkeys(servers + extra))
    names = []
    if f.identity is not None:
        try:
            names.append(f.identity.fqdn())
            if f.identity.coordinator_host and f.identity.coordinator_host != f.identity.hostname:
                names.append(f.identity.fqdn(f.identity.coordinator_host))
        except ConfigError:
            names = []
    if names:
        f.lookups = _lookups(names, servers)

    token = env.get(contract.GROUP_TOKEN_FILE_ENV) or contract.GROUP_TOKEN_FILE
    ssh_key = os.path.join(env.get(contract.SSH_DIR_ENV) or contract.SSH_DIR, contract.SSH_PRIVATE_KEY)
    f.secrets = {"group token": (token, _readable(token)), "ssh key": (ssh_key, _readable(ssh_key))}

    f.clock = ("skip", "not measured: the coordinator is unknown")
    if f.identity is not None and f.identity.coordinator_host:
        if f.identity.coordinator_host == f.identity.hostname:
            f.clock = ("skip", "this pod is the coordinator")
        elif clock:
            coord = f.identity.fqdn(f.identity.coordinator_host)
            ips = [a.ip for a in f.lookups.get(coord, []) if a.status == "ok"]
            f.clock = icmp_clock_offset(ips[0]) if ips else ("skip", "not measured: the coordinator does not resolve")
    return f


def run(env=None, fmt: str = "text", out=None) -> int:
    import sys

    results = checks(gather(env))
    (out or sys.stdout).write(render_json(results) + "\n" if fmt == "json" else render_text(results))
    return exit_code(results)
