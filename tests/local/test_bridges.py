"""The local network past one bridge's port limit: pods on further bridges still reach
the gateway (the DNS server) and each other, and released ports are used again."""

import socket
import subprocess

import pytest
from localfixtures import netns_unavailable

from jobset_runtime.local import pods


def _neighbours(ns: str) -> list[str]:
    out = subprocess.run(["ip", "-n", ns, "neigh", "show", "nud", "all"], capture_output=True, text=True, check=True)
    return [line.strip() for line in out.stdout.splitlines()]


def _udp_echo_between(net: pods.Network, server_ns: str, server_ip: str, client_ns: str) -> bytes:
    """One datagram from `client_ns` to `server_ns`'s address and back."""
    srv = pods.setns_thread_call(net.netns_path(server_ns), lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    cli = pods.setns_thread_call(net.netns_path(client_ns), lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    with srv, cli:
        srv.bind((server_ip, 0))
        srv.settimeout(5)
        cli.settimeout(5)
        cli.sendto(b"ping", srv.getsockname())
        data, addr = srv.recvfrom(16)
        srv.sendto(data + b"!", addr)
        return cli.recvfrom(16)[0]


def test_pods_beyond_one_bridge_reach_the_gateway_and_each_other(monkeypatch):
    why = netns_unavailable()
    if why:
        pytest.skip(f"network namespaces are unavailable: {why}")
    monkeypatch.setattr(pods, "PORTS_PER_BRIDGE", 3)
    net = pods.Network(pods.run_id())
    try:
        net.setup()
        slots = [net.new_slot() for _ in range(7)]
        net.create(slots)
        # br0: 3 pods (and 2 links to the others); br1 and br2: a link to br0 and 2 pods each.
        assert net._ports == [3, 2, 2], net._ports
        assert sorted(set(net._bridge_of.values())) == [0, 1, 2]
        first, last = slots[0], slots[-1]
        assert net._bridge_of[first[0]] != net._bridge_of[last[0]]
        assert _udp_echo_between(net, first[0], first[1], last[0]) == b"ping!"
        assert _udp_echo_between(net, last[0], last[1], first[0]) == b"ping!"
        # The gateway, where the DNS server listens, from the pod farthest from br0.
        assert _udp_echo_between(net, net.cluster_ns, pods.GATEWAY, last[0]) == b"ping!"
        # No ARP entry is learned (those count against a host-wide limit of 1,024 that a
        # JobSet of a thousand pods would overflow): the pods' are fixed, the rest multicast.
        for ns in (net.cluster_ns, first[0], last[0]):
            shown = _neighbours(ns)
            assert shown and all(line.split()[-1] in ("PERMANENT", "NOARP") for line in shown), (ns, shown)
        ipv4 = [line for line in _neighbours(last[0]) if line.startswith("198.")]
        assert ipv4 == [f"{pods.GATEWAY} dev eth0 lladdr {pods.BRIDGE_MAC} PERMANENT"], ipv4
        # Released ports are used again before any new bridge is made.
        net.release([slots[1][0]])
        again = [net.new_slot()]
        net.create(again)
        assert net._bridge_of[again[0][0]] == 0 and len(net._ports) == 3
        assert _udp_echo_between(net, again[0][0], again[0][1], last[0]) == b"ping!"
    finally:
        net.cleanup()
