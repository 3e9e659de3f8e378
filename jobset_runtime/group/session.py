"""One pod's place in the group channel, built from its Identity and the wrapper's options.

Flat: the coordinator pod hosts the GroupServer on its own IP and joins it like every other
pod; members reach it at the coordinator's FQDN.  Tree (above TREE_ABOVE members, or on
request): each Job is a slice, worker 0 of each slice runs a SliceLeader for its slice's
members, and the coordinator pod hosts the leaders' group (docs/fail-fast.md, Scale).  The
world is every pod of the Topology, keyed by hostname, which survives restarts (the pod
name's random suffix does not).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import contract
from ..errors import ConfigError, JobSetRuntimeError
from ..identity import Identity
from .member import GroupAborted, GroupMember
from .state import MemberId
from .wire import read_token


# Above this many members the coordinator would spend a large share of a core on heartbeats
# (docs/fail-fast.md: ~60 us per frame, 2 frames per member per heartbeat), so slices relay.
TREE_ABOVE = 1024


@dataclass(frozen=True)
class GroupOptions:
    token_path: str = contract.GROUP_TOKEN_FILE
    insecure: bool = False
    port: int = contract.GROUP_PORT
    leaders_port: int = contract.GROUP_LEADERS_PORT
    tree: str = "auto"  # auto: above TREE_ABOVE members; on; off
    join_timeout: float = 600.0
    heartbeat: float = 0.5
    deadline: float = 3.0
    # {fqdn: ip} the wrapper's wait already resolved: the channel connects there, with no second
    # lookup through the system resolver (which may not know what JOBSET_RUNTIME_NAMESERVERS answers).
    addresses: dict = field(default_factory=dict)


@dataclass
class GroupSession:
    member: GroupMember
    servers: list  # what this pod hosts: the coordinator's GroupServer(s), a SliceLeader

    def close(self, success: bool, linger: float = 2.0) -> None:
        self.member.close(success=success)
        for server in self.servers:
            # Members hang up once they have heard the end; give the last broadcast time to land.
            getattr(server, "server", server).drain(linger)
            server.stop()


def slices(topology, world: list[MemberId]) -> list[list[MemberId]]:
    """The members of each Job (a slice), in rank order: each Job's pods have contiguous ranks."""
    out, rank = [], 0
    for job in topology.jobs:
        for _ in range(job.replicas):
            out.append(world[rank:rank + job.pods])
            rank += job.pods
    return out


def _own_address(ident: Identity, opts: GroupOptions) -> str:
    """The pod's IP: fieldRef status.podIP or the kubelet's /etc/hosts line, else DNS."""
    if ident.pod_ip:
        return ident.pod_ip
    try:
        return opts.addresses.get(ident.fqdn()) or _own_lookup(ident, ident.fqdn(), opts.join_timeout)
    except JobSetRuntimeError as e:
        raise ConfigError(
            f"cannot tell this pod's IP for the group channel ({ident.fqdn()}: {e}); set "
            f"{contract.POD_IP_ENV} from fieldRef status.podIP"
        ) from None


def _address(fqdn: str, opts: GroupOptions) -> str:
    """The wait's answer for `fqdn` when it asked; else the name, which the member resolves
    with the runtime's own resolver as it connects (never the system resolver)."""
    return opts.addresses.get(fqdn, fqdn)


def _own_lookup(ident: Identity, fqdn: str, timeout: float) -> str:
    from ..addresses import family_of
    from ..peers import wait_for_hosts

    return wait_for_hosts([fqdn], timeout=timeout, family=family_of(ident.pod_ip))[fqdn]


def _known(ident: Identity, world: list[MemberId], me: MemberId, address: str):
    """The members' pods by DNS name, each rank bound to its pod's address; a name is asked for
    when its pod joins, once (docs/peers.md, DNS load).  The server's own pod is bound to the
    address it listens on, without a query, where other members reach it by its name (and so
    ask DNS for it); alone in its world, it asks DNS for its own name as for any other."""
    from ..addresses import family_of
    from ..admission import KnownPods

    own = {me.pod: address} if len(world) > 1 and me in world else None
    return KnownPods({m.pod: ident.fqdn(m.pod) for m in world}, on_claim=True, family=family_of(ident.pod_ip),
                     own=own)


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
    common = dict(token=token, insecure=opts.insecure, attempt=ident.restart_attempt,
                  heartbeat=opts.heartbeat, deadline=opts.deadline)
    import functools

    from ..addresses import family_of
    from ..peers import resolve_one

    # The server's name: one query to cluster DNS per try, in this pod's address family.
    resolve = functools.partial(resolve_one, family=family_of(ident.pod_ip))
    groups = slices(ident.topology, world)
    tree = len(groups) > 1 and (opts.tree == "on" or (opts.tree == "auto" and len(world) > TREE_ABOVE))
    mine = next(g for g in groups if me in g) if tree else world
    hosts_server = ident.is_coordinator if not tree else me == mine[0]
    address = _own_address(ident, opts) if hosts_server or ident.is_coordinator else None
    coordinator = address if ident.is_coordinator else _address(ident.fqdn(ident.coordinator), opts)
    servers = []
    try:
        if ident.is_coordinator:
            from .listener import open_listener

            # Flat: every member's server.  Tree: the leaders' group.
            top_world = [g[0] for g in groups] if tree else world
            bind = (address, opts.leaders_port if tree else opts.port)
            # Listening before server.py loads asyncio: members starting now connect, not retry.
            listener = open_listener(bind, len(top_world))
            try:
                from .server import GroupServer

                top = GroupServer(bind=bind, world=top_world, slices=groups if tree else None,
                                  known=_known(ident, top_world, me, address), listener=listener, **common)
            except BaseException:
                listener.close()
                raise
            top.start()
            servers.append(top)
        if tree and hosts_server:
            from .relay import SliceLeader

            leader = SliceLeader(bind=(address, opts.port), slice_world=mine, me=me,
                                 upstream=(coordinator, opts.leaders_port), leaders=[g[0] for g in groups],
                                 join_timeout=opts.join_timeout, barrier_timeout=opts.join_timeout,
                                 known=_known(ident, mine, me, address), source=ident.pod_ip, resolve=resolve, **common)
            leader.start()
            servers.append(leader)
        if tree:
            target = (address if hosts_server else _address(ident.fqdn(mine[0].pod), opts), opts.port)
        else:
            target = (coordinator, opts.port)
        member = GroupMember(server=target, me=me, world=mine, source=ident.pod_ip, resolve=resolve, **common)
        try:
            try:
                member.join(opts.join_timeout)
            except GroupAborted:
                # The start came and an abort right behind it (a pod failing at once): the group did
                # start, and the supervisor takes the abort as its first epoch's (restart in place).
                if not member.started:
                    raise
        except BaseException:
            # The servers stop first: a heartbeat sent after this pod's member left would name this
            # pod among the missing to every member still waiting.
            for server in servers:
                server.stop()
            servers.clear()
            member.close()
            raise
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return GroupSession(member, servers)
