"""One pod's place in the group channel, built from its Identity and the wrapper's options.

The coordinator pod hosts the GroupServer on its own IP and joins it like every other pod;
members reach it at the coordinator's FQDN.  The world is every pod of the Topology, keyed
by hostname, which survives restarts (the pod name's random suffix does not).
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

from .. import contract
from ..errors import ConfigError
from ..identity import Identity
from .member import GroupMember
from .state import MemberId
from .wire import read_token

log = logging.getLogger("jobset_runtime.group")

@dataclass(frozen=True)
class GroupOptions:
    token_path: str = contract.GROUP_TOKEN_FILE
    insecure: bool = False
    port: int = contract.GROUP_PORT
    join_timeout: float = 600.0
    heartbeat: float = 0.5
    deadline: float = 3.0


@dataclass
class GroupSession:
    member: GroupMember
    server: object | None  # GroupServer on the coordinator pod

    def close(self, success: bool, linger: float = 2.0) -> None:
        self.member.close(success=success)
        if self.server is not None:
            # Members hang up once they have heard the end; give the last broadcast time to land.
            self.server.drain(linger)
            self.server.stop()


def _own_address(ident: Identity) -> str:
    """The pod's IP: fieldRef status.podIP or the kubelet's /etc/hosts line, else DNS."""
    if ident.pod_ip:
        return ident.pod_ip
    try:
        return socket.gethostbyname(ident.fqdn())
    except OSError as e:
        raise ConfigError(
            f"cannot tell this pod's IP for the group channel ({ident.fqdn()}: {e}); set "
            f"{contract.POD_IP_ENV} from fieldRef status.podIP"
        ) from None


def open_session(ident: Identity, opts: GroupOptions) -> GroupSession:
    """Join (and, on the coordinator pod, host) the group; returns once every member has joined."""
    if ident.topology is None:
        raise ConfigError(
            f"the group channel needs every pod's name: set {contract.TOPOLOGY_ENV} "
            "(name:REPLICASxPODS,... in spec order), or run with --group off"
        )
    token = None if opts.insecure else read_token(opts.token_path)
    world = [MemberId(r, h) for r, h in enumerate(ident.all_hosts())]
    me = world[ident.rank]
    server = None
    if ident.is_coordinator:
        from .server import GroupServer

        address = _own_address(ident)
        server = GroupServer(bind=(address, opts.port), world=world, token=token, insecure=opts.insecure,
                             attempt=ident.restart_attempt, heartbeat=opts.heartbeat, deadline=opts.deadline)
        server.start()
        target = (address, opts.port)
        log.info("group: hosting the group channel for %d members on %s:%d", len(world), address, opts.port)
    else:
        target = (ident.fqdn(ident.coordinator), opts.port)
    member = GroupMember(server=target, me=me, world=world, token=token, insecure=opts.insecure,
                         attempt=ident.restart_attempt, heartbeat=opts.heartbeat, deadline=opts.deadline)
    try:
        member.join(opts.join_timeout)
    except BaseException:
        member.close()
        if server is not None:
            server.stop()
        raise
    return GroupSession(member, server)
