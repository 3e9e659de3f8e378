"""Which DNS servers to ask: JOBSET_RUNTIME_NAMESERVERS, else /etc/resolv.conf.

Pure parsing (`nameservers_from`) with one thin reader (`system_nameservers`).
Standard library only: imported on the `jobset-run` path.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping

from . import contract
from .addresses import join_host_port
from .errors import ConfigError

DNS_PORT = 53
# resolv.conf(5): at most MAXNS (3) nameservers are used; with none listed the
# resolver asks the name server on the local machine.
RESOLV_MAXNS = 3
RESOLV_DEFAULT = ("127.0.0.1", DNS_PORT)

Nameserver = tuple  # (ip: str, port: int)

_FORM = "expected ip[:port],... e.g. 10.96.0.10 or 10.96.0.10:53,[fd00::a]:53"


def format_nameserver(server: Nameserver) -> str:
    return join_host_port(*server)


def _ip(text: str) -> str:
    return str(ipaddress.ip_address(text))  # ValueError when not an address


def parse_one(entry: str) -> Nameserver:
    """`ip`, `ip:port`, `ipv6`, `[ipv6]` or `[ipv6]:port` -> (ip, port); ValueError if malformed."""
    entry = entry.strip()
    port = DNS_PORT
    if entry.startswith("["):
        host, sep, rest = entry[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(entry)
        if rest:
            port = int(rest[1:])
    elif entry.count(":") == 1:
        host, _, p = entry.partition(":")
        port = int(p)
    else:
        host = entry  # IPv4 without port, or a bare IPv6 address
    if not 0 < port < 65536:
        raise ValueError(entry)
    return (_ip(host), port)


def parse_nameservers(value: str, *, source: str = contract.NAMESERVERS_ENV) -> list[Nameserver]:
    """Parse `ip[:port],...`; a malformed entry is a ConfigError naming `source`."""
    servers = []
    for entry in value.split(","):
        try:
            servers.append(parse_one(entry))
        except ValueError:
            raise ConfigError(f"{source}={value!r}: {entry.strip()!r} is not a nameserver address; {_FORM}") from None
    return servers


def parse_resolv_conf(text: str) -> list[Nameserver]:
    """The `nameserver` lines of resolv.conf text, as the C resolver reads them.

    Unparsable addresses are skipped (the C resolver skips them too), at most
    three are kept, and with none the local machine's server is used.
    """
    servers = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0] != "nameserver":
            continue  # comments (# or ;), search, options, ...
        try:
            servers.append((_ip(parts[1]), DNS_PORT))
        except ValueError:
            continue
    return servers[:RESOLV_MAXNS] or [RESOLV_DEFAULT]


def nameservers_from(env: Mapping[str, str], resolv_conf_text: str | None) -> list[Nameserver]:
    """The servers to ask, from an environment and resolv.conf's text (None: no file).

    JOBSET_RUNTIME_NAMESERVERS wins when set and not blank.
    """
    value = env.get(contract.NAMESERVERS_ENV, "")
    if value.strip():
        return parse_nameservers(value)
    return parse_resolv_conf(resolv_conf_text or "")


def system_nameservers(env: Mapping[str, str] | None = None, resolv_conf: str = contract.RESOLV_CONF) -> list[Nameserver]:
    """`nameservers_from` on os.environ and the resolv.conf file (missing file: no entries)."""
    env = os.environ if env is None else env
    if env.get(contract.NAMESERVERS_ENV, "").strip():
        return nameservers_from(env, None)
    try:
        with open(resolv_conf, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        text = None
    return nameservers_from(env, text)
