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
