"""Addresses as they are written: `ip:port`, `[ipv6]:port`, which family a pod is in, and a
listener that serves both families.

Standard library only, pure but for listen_any: imported on jobset-run's start-up path.
"""

from __future__ import annotations

import ipaddress
import socket

FAMILIES = ("auto", "ipv4", "ipv6")


def join_host_port(host: str, port: int) -> str:
    """`10.0.0.1:8476`, `[fd00::1]:8476`, `name:8476`: the form JAX, Go and URLs all read."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def family_of(ip: str | None) -> str:
    """The DNS family to ask in for the peers of a pod with address `ip` (unknown: auto)."""
    try:
        return "ipv6" if ipaddress.ip_address(ip or "").version == 6 else "ipv4"
    except ValueError:
        return "auto"


def unmapped(ip: str) -> str:
    """`::ffff:10.0.0.1` -> `10.0.0.1`: how an IPv4 peer of a dual-stack listener is named
    everywhere else (DNS answers, admission's known pods)."""
    if ip.startswith("::ffff:"):
        try:
            mapped = ipaddress.IPv6Address(ip).ipv4_mapped
        except ValueError:
            return ip
        if mapped is not None:
            return str(mapped)
    return ip


def listen_any(port: int, backlog: int) -> socket.socket:
    """A TCP listener on every address of the pod, IPv6 and IPv4 alike (one dual-stack socket);
    IPv4 alone where the kernel has no IPv6.  A pod's family is not known before its peers
    connect: an IPv6-only, IPv4-only and dual-stack pod all reach it."""
    if socket.has_dualstack_ipv6():
        return socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=backlog)
    return socket.create_server(("0.0.0.0", port), backlog=backlog)


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands out by itself (connect() and bind() to port 0)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = map(int, f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _bind_check(host: str, port: int, kind: int) -> None:
    """Bind `host`:`port` as a server there would, and let go; OSError if it is taken.
    `::` or `` is the dual-stack wildcard (listen_any): taken when either family's holder is."""
    if host in ("", "::"):
        # The family listen_any() takes: has_ipv6 is how Python was built, not whether this
        # kernel has IPv6.
        dual = socket.has_dualstack_ipv6()
        s = socket.socket(socket.AF_INET6 if dual else socket.AF_INET, kind)
        if dual:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        host = "::" if dual else "0.0.0.0"
    else:
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
    with s:
        s.bind((host, port))


def free_port(*hosts: str, count: int = 1, udp: bool = False, ports=None, tries: int = 200) -> int:
    """The first of `count` consecutive ports that no socket holds on any of `hosts` right now
    (TCP, and UDP too with udp=True): the port a server about to bind to those addresses may take.

    Checked on the addresses the server will bind, not on 127.0.0.1 alone: a port free on one
    address can be held on another, or by a connection, which a listener on `::` (JAX's
    coordinator, sshd, listen_any) or on a pod's address then cannot take.  Chosen below the
    kernel's ephemeral range, so that no connect() anywhere on the machine takes it between this
    check and the server's bind; at random, so that runs sharing the machine rarely pick alike.
    hosts: default 127.0.0.1; `::` (or ``) stands for every address of both families.
    ports: the first ports to try, in order (default: `tries` picks below the ephemeral range)."""
    import itertools
    import random

    hosts = hosts or ("127.0.0.1",)
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
    if ports is None:
        low, _ = _ephemeral_range()
        first, last = max(1024, low - 16384), low - count
        if last >= first:
            ports = (random.randint(first, last) for _ in range(tries))
        else:  # no room below the ephemeral range (a tuned machine): the kernel's choice
            ports = (_kernel_port(hosts[0]) for _ in range(tries))
    for port in itertools.islice(ports, tries):
        try:
            for p in range(port, port + count):
                for host in hosts:
                    for kind in kinds:
                        _bind_check(host, p, kind)
        except OSError:
            continue
        return port
    shown = ", ".join(hosts[:3]) + (f" and {len(hosts) - 3} more" if len(hosts) > 3 else "")
    raise OSError(f"no {count} free port(s) in a row on {shown} in {tries} tries")


def _kernel_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host or "0.0.0.0", 0))
        return s.getsockname()[1]
