"""Black box: a real 2-pod `jobset-run` gang start while 64 slow clients flood the coordinator.

Each pod is a network + UTS namespace with its own address on a private bridge, names come from
a real DNS server, and each runs the real `jobset-run` with the group token.  The flood comes
from the host's side of the bridge (an address that is no pod's): 64 clients that trickle a
byte a second into a handshake and reconnect the moment they are dropped.  Before admission
control this kept every handshake slot full and the member exited 69 after its deadline."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from grouphelpers import ROOT, SlowClients, wait_until

from jobset_runtime import contract
from jobset_runtime.local.dns import DnsServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mpi"))
import nspods  # noqa: E402

DOMAIN = "svc.cluster.local"
HOSTS = ["fl-worker-0-0", "fl-worker-0-1"]  # rank 0 (the coordinator) and rank 1


def _skip_reason():
    if os.geteuid() != 0:
        return "network namespaces need root"
    from mpifixtures import can_make_namespaces

    return can_make_namespaces()


@pytest.fixture
def pods(tmp_path):
    why = _skip_reason()
    if why:
        pytest.skip(why)
    net = nspods.PodNetwork(f"f{os.getpid() % 1000}").up()
    dns = DnsServer(address=net.gateway, zones=[DOMAIN]).start()
    etc = []
    try:
        ips = {}
        for host in HOSTS:
            ips[host] = net.add(host)
            dns.set(f"{host}.fl.default.{DOMAIN}", ips[host])
        # glibc in the pods (the member's connect) reads /etc/hosts, which `ip netns exec` takes
        # from /etc/netns/NS/, as a kubelet writes every pod's own line.
        for host, (ns, _) in net.pods.items():
            d = Path("/etc/netns") / ns
            d.mkdir(parents=True, exist_ok=True)
            etc.append(d)
            (d / "hosts").write_text("127.0.0.1 localhost\n" + "".join(
                f"{ip} {h}.fl.default.{DOMAIN} {h}\n" for h, ip in ips.items()))
        yield net, dns, ips
    finally:
        net.down()
        dns.stop()
        for d in etc:
            (d / "hosts").unlink(missing_ok=True)
            d.rmdir()


def start_pod(pods, tmp_path, token, i: int, group_timeout: float) -> subprocess.Popen:
    """`jobset-run` for pod i, its command printing that it started."""
    net, dns, ips = pods
    host = HOSTS[i]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSET_RUNTIME_")}
    env.update({
        "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1",
        "JOBSET_RUNTIME_JOBSET_NAME": "fl", "JOBSET_RUNTIME_REPLICATED_JOB": "worker",
        "JOBSET_RUNTIME_JOB_INDEX": "0", "JOBSET_RUNTIME_POD_INDEX": str(i),
        "JOBSET_RUNTIME_NAMESPACE": "default", "JOBSET_RUNTIME_TOPOLOGY": "worker:1x2",
        "JOBSET_RUNTIME_NAMESERVERS": dns.nameserver, "JOBSET_RUNTIME_POD_IP": ips[host],
        "JOBSET_RUNTIME_GROUP_TOKEN_FILE": str(token),
        "JOBSET_RUNTIME_TERMINATION_LOG": str(tmp_path / f"termination-{host}"),
    })
    argv = [sys.executable, "-c", "import sys; from jobset_runtime.cli import run_main; sys.exit(run_main())",
            "--timeout", "60", "--group-timeout", str(group_timeout), "--",
            sys.executable, "-c", "import os; print('STARTED rank', os.environ['JOBSET_RUNTIME_RANK'])"]
    return subprocess.Popen(net.argv(host, argv), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_64_slow_reconnecting_clients_do_not_stop_a_real_gang_start(pods, tmp_path):
    _, _, ips = pods
    token = tmp_path / "token"
    token.write_bytes(os.urandom(32).hex().encode())
    procs = {}
    with SlowClients((ips[HOSTS[0]], contract.GROUP_PORT), n=64, source=None, every=1.0, limit=90) as flood:
        for i, host in enumerate(HOSTS):
            if i == 1:  # the flood is at the coordinator before the member arrives: every client in once
                wait_until(lambda: flood.connections >= 64, "the flood to reach the coordinator", timeout=60)
            procs[host] = start_pod(pods, tmp_path, token, i, group_timeout=60)
        outs = {host: p.communicate(timeout=120)[0] for host, p in procs.items()}
        connections = flood.connections
    for i, host in enumerate(HOSTS):
        assert procs[host].returncode == 0, {h: o[-3000:] for h, o in outs.items()}
        assert f"STARTED rank {i}" in outs[host], outs[host][-3000:]
    assert connections > 64, connections  # the flood really reached the coordinator and was dropped
    # The coordinator said so, in a few aggregated lines rather than one per connection.
    summaries = [line for line in outs[HOSTS[0]].splitlines() if "unauthenticated connection" in line]
    assert 1 <= len(summaries) <= 10, outs[HOSTS[0]][-3000:]


def test_under_the_flood_a_coordinator_whose_peer_never_comes_still_ends_at_its_deadline(pods, tmp_path):
    """Its own deadline holds under the flood: exit 69, naming the missing pod."""
    _, _, ips = pods
    token = tmp_path / "token"
    token.write_bytes(os.urandom(32).hex().encode())
    with SlowClients((ips[HOSTS[0]], contract.GROUP_PORT), n=64, source=None, every=1.0, limit=90):
        proc = start_pod(pods, tmp_path, token, 0, group_timeout=8)
        try:
            out = proc.communicate(timeout=60)[0]
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == contract.EXIT_PEERS_TIMEOUT, out[-3000:]
    assert "1 of 2 group members had not joined" in out and "fl-worker-0-1" in out, out[-3000:]
    assert "STARTED" not in out
