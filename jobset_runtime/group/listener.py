"""The group server's listening socket, opened before the server's event loop exists.

Every pod's wrapper starts at about the same moment, and the coordinator's has more to load
(asyncio, tens of ms) before its server runs.  Listening first lets the other wrappers connect
into the kernel's backlog instead of being refused and retrying: their handshakes are answered
as soon as the loop runs.  Nothing is read from a connection before the server authenticates it.
"""

from __future__ import annotations

import socket

from ..addresses import join_host_port
from ..errors import ConfigError


def open_listener(bind: tuple[str, int], members: int) -> socket.socket:
    """A non-blocking socket listening on `bind`, with a backlog for `members` connecting at once."""
    host, port = bind
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        # Room for the whole world connecting at once (a flat gang start); the kernel caps it at
        # net.core.somaxconn (docs/fail-fast.md, Limits at the record scale).
        sock = socket.create_server((host, port), family=family, backlog=max(1024, 2 * members))
    except OSError as e:
        raise ConfigError(f"the group channel cannot listen on {join_host_port(host, port)}: {e.strerror or e}; "
                          "bind the pod's own address and a port nothing else uses") from None
    sock.setblocking(False)
    return sock
