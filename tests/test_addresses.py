"""Addresses as written, and the one listener that serves IPv4 and IPv6 peers alike."""

import socket
import time

import pytest

from jobset_runtime.addresses import family_of, free_port, join_host_port, listen_any, unmapped

needs_dualstack = pytest.mark.skipif(not socket.has_dualstack_ipv6(), reason="this kernel has no IPv6")


def test_join_and_family():
    assert join_host_port("fd6a:7372::2", 7472) == "[fd6a:7372::2]:7472"
    assert join_host_port("198.18.0.2", 7472) == "198.18.0.2:7472"
    assert family_of("fd6a:7372::2") == "ipv6" and family_of("10.0.0.1") == "ipv4" and family_of(None) == "auto"


def test_unmapped_names_an_ipv4_peer_as_dns_does():
    assert unmapped("::ffff:10.0.0.7") == "10.0.0.7"
    assert unmapped("::ffff:a00:7") == "10.0.0.7"  # the same address, written the other way
    assert unmapped("fd6a:7372::2") == "fd6a:7372::2"
    assert unmapped("10.0.0.7") == "10.0.0.7"
    assert unmapped("::ffff:not-an-address") == "::ffff:not-an-address"


@needs_dualstack
def test_listen_any_accepts_both_families():
    with listen_any(0, backlog=8) as server:
        port = server.getsockname()[1]
        seen = []
        for host in ("127.0.0.1", "::1"):
            with socket.create_connection((host, port), timeout=5):
                conn, addr = server.accept()
                seen.append(unmapped(addr[0]))
                conn.close()
    assert seen == ["127.0.0.1", "::1"]


@needs_dualstack
def test_mpi_worker_serves_ipv4_and_ipv6_launchers_and_admits_by_plain_address():
    """The worker's default listener: a launcher on an IPv6 pod and one on an IPv4 pod both open
    their watch channel, and admission is asked about `127.0.0.1`, never `::ffff:127.0.0.1` (the
    form DNS and its known pods use)."""
    from jobset_runtime.mpi import channel
    from jobset_runtime.mpi.worker import WorkerServer

    key = channel.derive_key(b"0123456789abcdef0123456789abcdef")
    asked = []
    worker = WorkerServer(key, pod="w0", port=0, known=lambda addr: asked.append(addr) or False).start()
    try:
        chans = [channel.connect(host, worker.port, key, role="watch", pod="launcher") for host in ("::1", "127.0.0.1")]
        deadline = time.monotonic() + 10
        while worker.watchers < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.watchers == 2
        assert sorted(set(asked)) == ["127.0.0.1", "::1"], asked
        for chan in chans:
            chan.close()
    finally:
        worker.close()


@needs_dualstack
def test_free_port_checks_the_addresses_the_server_binds():
    """A port held on 127.0.0.2 is free on 127.0.0.1 (all that the old checks looked at), and
    taken for a listener on `::` (JAX's coordinator, sshd, listen_any) or on 127.0.0.2."""
    with socket.create_server(("127.0.0.2", 0)) as held:
        port = held.getsockname()[1]
        assert free_port("127.0.0.1", ports=[port]) == port
        for hosts in (("::",), ("127.0.0.2",), ("127.0.0.1", "127.0.0.2")):
            with pytest.raises(OSError, match="no 1 free port"):
                free_port(*hosts, ports=[port])
        # Another port is found where the first is taken, and a dual-stack listener takes it.
        got = free_port("::", ports=[port, *range(20000, 20200)])
        assert got != port
        with listen_any(got, backlog=1):
            pass


def test_free_port_with_udp_and_consecutive_ports():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:  # UDP only: TCP stays free
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        assert free_port(ports=[port]) == port
        with pytest.raises(OSError, match="no 1 free port"):
            free_port(udp=True, ports=[port])
        with pytest.raises(OSError, match="no 2 free port"):  # the second of two in a row is held
            free_port(count=2, udp=True, ports=[port - 1])
    first = free_port("127.0.0.1", "127.0.0.2", count=2, udp=True)
    for host in ("127.0.0.1", "127.0.0.2"):
        for p in (first, first + 1):
            with socket.create_server((host, p)), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((host, p))
