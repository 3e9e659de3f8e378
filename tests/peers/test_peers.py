"""Peer discovery against real DNS servers (dnsmasq, the embedded server) and real sockets."""

import logging
import socket
import threading
import time

import dnsfixtures
import pytest

from jobset_runtime import contract
from jobset_runtime.addresses import free_port
from jobset_runtime.errors import ConfigError, DnsUnavailable, PeersTimeout
from jobset_runtime.local.dns import DnsServer
from jobset_runtime.peers import NO_REPLY, connect_batch, resolve_batch, wait_for_hosts

SUB = "js.default.svc.cluster.local"


def pod_names(slices, pods, js="js"):
    return [f"{js}-slice-{j}-{p}.{SUB}" for j in range(slices) for p in range(pods)]


def address_of(i):
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def later(delay, fn, *args):
    t = threading.Timer(delay, fn, args)
    t.start()
    return t


# --- resolution -------------------------------------------------------------------


def test_all_names_of_a_large_jobset_resolve_dnsmasq(tmp_path):
    if dnsfixtures.find_dnsmasq() is None:
        pytest.skip("dnsmasq is not installed (Debian: apt-get install dnsmasq-base)")
    names = pod_names(199, 64)  # 12,736 pods
    hosts = {n: address_of(i) for i, n in enumerate(names)}
    with dnsfixtures.Dnsmasq(tmp_path, hosts) as dm:
        got = wait_for_hosts(names, nameservers=[dm.nameserver], timeout=60)
    assert got == hosts


def test_records_that_appear_late_dnsmasq(tmp_path, dnsmasq):
    names = pod_names(4, 8)
    hosts = {n: address_of(i) for i, n in enumerate(names)}
    dnsmasq.update(dict(list(hosts.items())[:10]))
    wait_for_hosts(names[:10], nameservers=[dnsmasq.address], timeout=30, max_backoff=0.1)  # reloaded
    early = resolve_batch(names, [dnsmasq.address])
    assert set(early.failed) == set(names[10:]) and set(early.failed.values()) == {"NXDOMAIN"}
    timer = later(0.5, dnsmasq.update, hosts)  # SIGHUP: the rest appear
    try:
        got = wait_for_hosts(names, nameservers=[dnsmasq.nameserver], timeout=60, max_backoff=0.3)
    finally:
        timer.join()
    assert got == hosts


def test_nxdomain_then_success(dns_server):
    names = pod_names(2, 4)
    for i, n in enumerate(names):
        dns_server.set(n, address_of(i), visible_after=1.5 if i % 2 else 0.0)
    first = resolve_batch(names, [dns_server.address])
    assert set(first.failed) == set(names[1::2])
    assert set(first.failed.values()) == {"NXDOMAIN"}
    got = wait_for_hosts(names, nameservers=[dns_server.address], timeout=60, max_backoff=0.3)
    assert got == {n: address_of(i) for i, n in enumerate(names)}


def test_servfail_then_success(dns_server):
    name = f"js-slice-0-0.{SUB}"
    dns_server.set(name, "10.0.0.7")
    dns_server.servfail.add(name)
    assert resolve_batch([name], [dns_server.address]).failed == {name: "SERVFAIL"}
    timer = later(0.5, dns_server.servfail.clear)
    try:
        assert wait_for_hosts([name], nameservers=[dns_server.address], timeout=60, max_backoff=0.3) == {
            name: "10.0.0.7"
        }
    finally:
        timer.join()


def test_dropped_udp_queries_lose_no_name(dns_server):
    names = pod_names(4, 64)
    hosts = {n: address_of(i) for i, n in enumerate(names)}
    for n, ip in hosts.items():
        dns_server.set(n, ip)
    dns_server.drop_first_udp = 100
    got = resolve_batch(names, [dns_server.address])  # one batch: retransmission alone recovers them
    assert got.resolved == hosts and not got.failed
    assert dns_server.stats["dropped"] == 100


def test_random_udp_loss_lose_no_name(dns_server):
    names = pod_names(4, 64)
    hosts = {n: address_of(i) for i, n in enumerate(names)}
    for n, ip in hosts.items():
        dns_server.set(n, ip)
    dns_server.drop_rate = 0.3
    assert wait_for_hosts(names, nameservers=[dns_server.address], timeout=60) == hosts
    assert dns_server.stats["dropped"] > 0


def test_truncated_answer_is_asked_again_over_tcp(dns_server):
    name = f"js.{SUB}"  # a Service name answering with every pod's address
    ips = [address_of(i) for i in range(1, 120)]
    dns_server.set(name, ips)
    got = resolve_batch([name], [dns_server.address])
    assert got.resolved[name] in ips and not got.failed
    assert dns_server.stats["truncated"] == 1 and dns_server.stats["tcp"] == 1


def test_truncated_answer_over_tcp_dnsmasq(tmp_path, dnsmasq):
    name = f"js.{SUB}"
    ips = [address_of(i) for i in range(1, 120)]
    dnsmasq.update({name: ips})
    got = wait_for_hosts([name], nameservers=[dnsmasq.nameserver], timeout=30, max_backoff=0.3)
    assert got[name] in ips


def test_names_are_case_blind_with_optional_dot_and_ip_literals_pass(dns_server):
    dns_server.set(f"a.{SUB}", "10.0.0.1")
    names = [f"A.{SUB}.", "192.0.2.1", "fd00::1"]
    assert wait_for_hosts(names, nameservers=[dns_server.nameserver], timeout=30) == {
        f"A.{SUB}.": "10.0.0.1", "192.0.2.1": "192.0.2.1", "fd00::1": "fd00::1"
    }


def test_invalid_name_is_a_config_error(dns_server):
    with pytest.raises(ConfigError, match="not a valid DNS hostname"):
        resolve_batch(["a" * 64 + ".example"], [dns_server.address])


def test_second_server_answers_when_first_is_silent(dns_server):
    name = f"js-slice-0-0.{SUB}"
    with DnsServer(zones=["cluster.local"]) as silent:
        silent.silent = True
        dns_server.set(name, "10.0.0.9")
        got = wait_for_hosts([name], nameservers=[silent.address, dns_server.address], timeout=30)
    assert got == {name: "10.0.0.9"}


# --- failures people meet -------------------------------------------------------------


def test_server_that_never_answers_is_an_outage_naming_it(dns_server):
    # A DNS outage is an infrastructure fault: exit 69 (restart), never 2 (FailJob).
    dns_server.silent = True
    with pytest.raises(DnsUnavailable) as info:
        wait_for_hosts(pod_names(1, 3), nameservers=[dns_server.address], timeout=2.5)
    message = str(info.value)
    assert dns_server.nameserver in message and "never answered" in message
    assert contract.NAMESERVERS_ENV in message and "/etc/resolv.conf" in message
    assert info.value.exit_code == contract.EXIT_PEERS_TIMEOUT


def test_nothing_listening_is_an_outage(dns_server):
    ip, port = dns_server.address
    dns_server.stop()  # port now closed: ICMP port unreachable
    with pytest.raises(DnsUnavailable, match=f"127.0.0.1:{port} never answered"):
        wait_for_hosts(pod_names(1, 2), nameservers=[(ip, port)], timeout=2.5)


def test_deadline_names_the_missing_hosts(dns_server):
    names = pod_names(2, 8)
    for i, n in enumerate(names[:4]):
        dns_server.set(n, address_of(i))
    dns_server.servfail.add(names[4])
    with pytest.raises(PeersTimeout) as info:
        wait_for_hosts(names, nameservers=[dns_server.address], timeout=1.5, max_backoff=0.3)
    message = str(info.value)
    assert "12 of 16 hosts" in message and "(+7 more)" in message
    assert names[4] in message and names[5] in message and names[0] not in message.split(":")[2]
    assert "SERVFAIL: " + names[4] in message and "NXDOMAIN: " in message
    assert dns_server.nameserver in message and "DNS A" in message
    assert info.value.exit_code == contract.EXIT_PEERS_TIMEOUT


def test_progress_lines(dns_server, caplog):
    names = pod_names(1, 8)
    dns_server.set(names[0], "10.0.0.1")
    caplog.set_level(logging.INFO, logger="jobset_runtime.peers")
    with pytest.raises(PeersTimeout):
        wait_for_hosts(names, nameservers=[dns_server.address], timeout=1.0, progress_interval=0.0, max_backoff=0.2)
    lines = [r.getMessage() for r in caplog.records if r.name == "jobset_runtime.peers"]
    assert lines and lines[0].startswith("resolved 1/8; waiting for ")
    assert lines[0].endswith("(+2 more)")


# --- TCP readiness ----------------------------------------------------------------


def listen_later(delay, port_holder, ready):
    def open_listener():
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port_holder[0]))
        s.listen(16)
        ready.append(s)

    return later(delay, open_listener)


def test_tcp_port_that_opens_late(dns_server):
    names = pod_names(1, 4)
    for n in names:
        dns_server.set(n, "127.0.0.1")
    port = free_port()
    listeners = []
    timer = listen_later(0.5, [port], listeners)
    try:
        got = wait_for_hosts(names, port=port, nameservers=[dns_server.address], timeout=30, max_backoff=0.3)
    finally:
        timer.join()
        for s in listeners:
            s.close()
    assert got == {n: "127.0.0.1" for n in names}


def test_tcp_follows_a_new_address(dns_server):
    name = f"js-slice-0-0.{SUB}"
    dns_server.set(name, "127.0.0.2")  # the old pod: nothing listens there
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        timer = later(0.4, dns_server.set, name, ["127.0.0.1"])  # recreated with a new IP
        try:
            got = wait_for_hosts([name], port=port, nameservers=[dns_server.address], timeout=30, max_backoff=0.3)
        finally:
            timer.join()
    assert got == {name: "127.0.0.1"}


def test_tcp_deadline_names_port_and_error(dns_server):
    names = pod_names(1, 2)
    for n in names:
        dns_server.set(n, "127.0.0.1")
    port = free_port()
    with pytest.raises(PeersTimeout) as info:
        wait_for_hosts(names, port=port, nameservers=[dns_server.address], timeout=2.0, max_backoff=0.2)
    message = str(info.value)
    assert f"TCP connections on port {port}" in message and "connection refused" in message
    assert names[0] in message and names[1] in message


def test_connect_batch_reports_each_name():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        errors = connect_batch({"up": "127.0.0.1", "down": "127.0.0.3"}, port, timeout=5)
    assert errors == {"down": "connection refused"}


def test_no_reply_status_when_silent(dns_server):
    dns_server.silent = True
    got = resolve_batch([f"a.{SUB}"], [dns_server.address], silence=0.5)
    assert got.failed == {f"a.{SUB}": NO_REPLY} and got.replies == 0 and got.queries >= 1


def test_bad_nameserver_argument_and_empty_list():
    with pytest.raises(ConfigError, match="nameserver 'dns.example'"):
        resolve_batch([f"a.{SUB}"], ["dns.example"])
    assert wait_for_hosts([], nameservers=["127.0.0.1:53"], timeout=1) == {}


def test_importing_peers_loads_neither_dnspython_nor_tenacity():
    # jobset-run imports peers on its way to every training process.
    import os
    import pathlib
    import subprocess
    import sys

    root = str(pathlib.Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    code = "import sys, jobset_runtime.peers; print(sorted(m for m in sys.modules if m.split('.')[0] in ('dns', 'tenacity')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "[]"


# --- IPv6 and dual-stack clusters ------------------------------------------------------------


def v6_address_of(i):
    return f"fd00:10::{i:x}"


@pytest.mark.parametrize("server_kind", ["dnsmasq", "embedded"])
def test_ipv6_only_cluster_resolves_through_aaaa(server_kind, tmp_path):
    names = pod_names(2, 4)
    hosts = {n: v6_address_of(i + 1) for i, n in enumerate(names)}
    if server_kind == "dnsmasq":
        if dnsfixtures.find_dnsmasq() is None:
            pytest.skip("dnsmasq is not installed (Debian: apt-get install dnsmasq-base)")
        server = dnsfixtures.Dnsmasq(tmp_path, hosts)
    else:
        server = DnsServer(zones=["svc.cluster.local"])
        for n, ip in hosts.items():
            server.set(n, ip)
    with server:
        # The pod's own family known: AAAA only, one query per name.
        got = resolve_batch(names, [server.address], family="ipv6")
        assert got.resolved == hosts and got.queries == len(names)
        # Unknown family: A first (no A record), then AAAA for exactly those names.
        got = resolve_batch(names, [server.address], family="auto")
        assert got.resolved == hosts and got.failed == {} and got.queries == 2 * len(names)
        assert wait_for_hosts(names, nameservers=[server.address], timeout=10) == hosts
        # Asking for IPv4 on an IPv6-only cluster says exactly what is missing.
        with pytest.raises(PeersTimeout) as info:
            wait_for_hosts(names, nameservers=[server.address], timeout=1.5, family="ipv4")
        assert "DNS A records" in str(info.value) and "no A record" in str(info.value)


def test_dual_stack_follows_the_pods_family(dns_server):
    names = pod_names(1, 3)
    for i, n in enumerate(names):
        dns_server.set(n, [address_of(i + 1), v6_address_of(i + 1)])
    v4 = {n: address_of(i + 1) for i, n in enumerate(names)}
    v6 = {n: v6_address_of(i + 1) for i, n in enumerate(names)}
    assert wait_for_hosts(names, nameservers=[dns_server.address], timeout=5, family="ipv4") == v4
    assert wait_for_hosts(names, nameservers=[dns_server.address], timeout=5, family="ipv6") == v6
    got = resolve_batch(names, [dns_server.address], family="auto")
    assert got.resolved == v4 and got.queries == len(names)  # A answers: no second query


def test_ipv6_peer_port_wait(dns_server):
    listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    try:
        port = listener.getsockname()[1]
        name = pod_names(1, 1)[0]
        dns_server.set(name, "::1")
        assert wait_for_hosts([name], port=port, nameservers=[dns_server.address], timeout=5,
                              family="ipv6") == {name: "::1"}
    finally:
        listener.close()


@pytest.mark.parametrize("ip,family", [("10.0.0.1", "ipv4"), ("fd00::1", "ipv6"), (None, "auto"), ("", "auto"),
                                       ("not-an-ip", "auto")])
def test_family_of_the_pods_own_address(ip, family):
    from jobset_runtime.peers import family_of

    assert family_of(ip) == family


def test_unknown_family_is_a_config_error(dns_server):
    with pytest.raises(ConfigError, match="address family 'inet6'"):
        resolve_batch(pod_names(1, 1), [dns_server.address], family="inet6")


# --- a lone lookup (a group member asking for its server) --------------------------------


def test_a_lone_lookup_asks_again_for_a_missing_name_only_after_its_hold(dns_server):
    from jobset_runtime.peers import NegativeHolds, resolve_one

    name = f"js-slice-0-0.{SUB}"
    dns_server.set(name, "10.0.0.9", visible_after=1.2)
    holds, misses, held = NegativeHolds(), 0, 0
    while True:  # a caller retrying far faster than the hold
        try:
            got = resolve_one(name, [dns_server.address], holds=holds)
            break
        except LookupError as e:
            misses += 1
            held += "not asked again" in str(e)
            threading.Event().wait(0.02)
    assert got == "10.0.0.9"
    asked = dns_server.stats["udp"]
    # Held misses cost no query: 0.5 s, then 1 s, ... between queries, however often it is called.
    assert held == misses - (asked - 1) and held > 10
    assert asked <= 5, asked
    # Found: the hold is gone, the next call asks at once; another pod's holds are its own.
    assert resolve_one(name, [dns_server.address], holds=holds) == "10.0.0.9"
    assert dns_server.stats["udp"] == asked + 1


@pytest.mark.parametrize("late", [0.4, 1.5])
def test_a_lone_lookup_waits_for_a_slow_server_instead_of_asking_twice(dns_server, late):
    """A reply late by less than LONE_RTO (a busy cluster DNS; c-ares and dnspython wait 2 s too)
    is waited for: one query, no retransmission."""
    from jobset_runtime.peers import NegativeHolds, resolve_one

    name = f"js-slice-0-1.{SUB}"
    dns_server.set(name, "10.0.0.10")
    with dnsfixtures.SlowDns(dns_server.address, delay=late) as relay:  # every query passed on before it closes
        got = resolve_one(name, [relay.address], holds=NegativeHolds())
    assert got == "10.0.0.10"
    assert dns_server.stats["udp"] == 1


def _time_wait_on(port: int) -> int:
    """Sockets in TIME_WAIT (state 06) with `port` at either end, in this network namespace."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if state == "06" and port in (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)):
                count += 1
    return count


def test_port_probes_leave_no_time_wait_behind():
    """A launcher probes every worker's port, then connects to each again: probes that sat in
    TIME_WAIT for a minute would hold an ephemeral port each (12,736 at the record scale)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted = []

    def serve():  # accepts, and closes only once the probe has gone (as a worker does)
        listener.settimeout(5)
        for _ in range(20):
            conn, _ = listener.accept()
            accepted.append(conn)

    t = threading.Thread(target=serve)
    t.start()
    names = {f"w-{i}.{SUB}": "127.0.0.1" for i in range(20)}
    assert connect_batch(names, port) == {}
    t.join()
    for conn in accepted:
        try:
            conn.recv(16)  # the reset (or, without it, the FIN)
        except ConnectionResetError:
            pass
        conn.close()
    listener.close()
    assert len(accepted) == 20
    assert _time_wait_on(port) == 0


def test_a_lone_lookup_sends_its_query_again_once_after_LONE_RTO_when_it_is_lost(dns_server):
    from jobset_runtime.peers import LONE_RTO, NegativeHolds, resolve_one

    name = f"js-slice-0-2.{SUB}"
    dns_server.set(name, "10.0.0.11")
    dns_server.drop_first_udp = 1  # the first datagram is lost
    start = time.monotonic()
    assert resolve_one(name, [dns_server.address], holds=NegativeHolds()) == "10.0.0.11"
    assert time.monotonic() - start >= LONE_RTO * 0.9
    assert dns_server.stats["udp"] == 2 and dns_server.stats["dropped"] == 1
    # Both lost: no reply after LONE_TRIES sends, a miss the caller retries.
    dns_server.drop_first_udp = 2
    with pytest.raises(LookupError, match="no reply"):
        resolve_one(f"js-slice-0-3.{SUB}", [dns_server.address], holds=NegativeHolds())
    assert dns_server.stats["udp"] == 4
