"""Addresses as they are written: `ip:port`, `[ipv6]:port`, and which family a pod is in.

Pure, standard library only: imported on jobset-run's start-up path.
"""

from __future__ import annotations

import ipaddress

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
