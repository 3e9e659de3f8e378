"""`jobset-runtime wait` and `jobset-run --wait` against a real DNS server, as subprocesses."""

import signal
import socket
import subprocess
import sys
import threading

import pytest

PYTHON = sys.executable
from jobset_runtime.local.dns import DnsServer

ZONE = "demo.default.svc.cluster.local"
POD = {
    "JOBSET_RUNTIME_JOBSET_NAME": "demo", "JOBSET_RUNTIME_REPLICATED_JOB": "worker",
    "JOBSET_RUNTIME_JOB_INDEX": "1", "JOB_COMPLETION_INDEX": "1", "JOBSET_RUNTIME_NAMESPACE": "default",
    "JOBSET_RUNTIME_TOPOLOGY": "worker:2x2",
}


@pytest.fixture
def dns():
    with DnsServer(zones=[ZONE]) as server:
        yield server


def fqdn(host):
    return f"{host}.{ZONE}"


def run(cli_env, dns, *args, timeout=60):
    env = {**cli_env, **POD, "JOBSET_RUNTIME_NAMESERVERS": dns.nameserver}
    return subprocess.run([PYTHON, "-m", "jobset_runtime", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_wait_slice_for_records_that_appear_late(cli_env, dns):
    dns.set(fqdn("demo-worker-0-0"), ["127.0.0.1"])
    dns.set(fqdn("demo-worker-1-0"), ["127.0.0.1"], visible_after=1.0)
    dns.set(fqdn("demo-worker-1-1"), ["127.0.0.1"], visible_after=2.0)
    r = run(cli_env, dns, "wait", "slice", "--timeout", "30")
    assert r.returncode == 0, r.stderr
    assert "waiting for 3 hosts (slice)" in r.stderr


def test_wait_all_times_out_naming_the_missing(cli_env, dns):
    dns.set(fqdn("demo-worker-0-0"), ["127.0.0.1"])
    r = run(cli_env, dns, "wait", "all", "--timeout", "2")
    assert r.returncode == 69, r.stderr
    assert "3 of 4 hosts" in r.stderr
    assert "demo-worker-0-1" in r.stderr and "demo-worker-1-1" in r.stderr
    assert dns.nameserver.split(":")[0] in r.stderr
    assert "Traceback" not in r.stderr


def test_wait_with_port(cli_env, dns):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    dns.set(fqdn("demo-worker-0-0"), ["127.0.0.1"])
    # The port opens a second after the wait starts.
    threading.Timer(1.0, listener.listen).start()
    try:
        r = run(cli_env, dns, "wait", "coordinator", "--port", str(port), "--timeout", "30")
    finally:
        listener.close()
    assert r.returncode == 0, r.stderr


def test_jobset_run_waits_for_the_coordinator_then_runs(cli_env, dns, tmp_path):
    dns.set(fqdn("demo-worker-0-0"), ["127.0.0.1"], visible_after=1.0)
    out = tmp_path / "ran"
    r = run(cli_env, dns, "run", "--timeout", "30", "--", PYTHON, "-c", f"open({str(out)!r}, 'w').write('x')")
    assert r.returncode == 0, r.stderr
    assert out.exists()


def test_jobset_run_does_not_start_the_command_when_peers_never_come(cli_env, dns, tmp_path):
    out = tmp_path / "ran"
    log = tmp_path / "termination-log"
    r = run(cli_env, dns, "run", "--timeout", "2", "--termination-log", str(log), "--",
            PYTHON, "-c", f"open({str(out)!r}, 'w')")
    assert r.returncode == 69
    assert not out.exists()
    assert "demo-worker-0-0" in log.read_text()


def test_unreachable_dns_server_is_an_outage_that_restarts(cli_env):
    # A bound UDP socket that never answers: the server is "there" but silent.
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        env = {**cli_env, **POD, "JOBSET_RUNTIME_NAMESERVERS": f"127.0.0.1:{silent.getsockname()[1]}"}
        r = subprocess.run([PYTHON, "-m", "jobset_runtime", "wait", "coordinator", "--timeout", "2"], env=env,
                           capture_output=True, text=True, timeout=60)
    finally:
        silent.close()
    assert r.returncode == 69, r.stderr  # an outage restarts the JobSet; 2 would fail it for good
    assert "never answered" in r.stderr and "JOBSET_RUNTIME_NAMESERVERS" in r.stderr


def test_stopped_while_waiting_for_peers_leaves_a_cause(cli_env, dns, tmp_path):
    log = tmp_path / "termination-log"
    env = {**cli_env, **POD, "JOBSET_RUNTIME_NAMESERVERS": dns.nameserver}
    p = subprocess.Popen([sys.executable, "-m", "jobset_runtime", "run", "--timeout", "60", "--termination-log",
                          str(log), "--", "true"], env=env, stderr=subprocess.PIPE, text=True)
    # The coordinator never resolves: the wrapper is waiting when the kubelet's SIGTERM comes.
    while "waiting for 1 host" not in p.stderr.readline():
        pass
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 128 + signal.SIGTERM
    assert log.read_text() == "stopped by SIGTERM before the command started"


def test_names_only_the_configured_servers_know_are_never_asked_of_the_system_resolver(cli_env, dns, tmp_path):
    """JOBSET_RUNTIME_NAMESERVERS answers names the system resolver does not know (the way around a
    node-local cache): the wait, the group channel and MASTER_ADDR all use that one answer."""
    token = tmp_path / "token"
    token.write_text("a-test-token-of-at-least-16-bytes")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dns.set(fqdn("demo-worker-0-0"), ["127.0.0.1"])
    dns.set(fqdn("demo-worker-0-1"), ["127.0.0.1"])
    with pytest.raises(OSError):
        socket.getaddrinfo(fqdn("demo-worker-0-0"), port)  # unknown to this machine's resolver
    procs = []
    for index in (0, 1):
        env = {**cli_env, **POD, "JOBSET_RUNTIME_TOPOLOGY": "worker:1x2", "JOBSET_RUNTIME_JOB_INDEX": "0",
               "JOB_COMPLETION_INDEX": str(index), "JOBSET_RUNTIME_POD_IP": "127.0.0.1",
               "JOBSET_RUNTIME_NAMESERVERS": dns.nameserver, "JOBSET_RUNTIME_GROUP_TOKEN_FILE": str(token)}
        procs.append(subprocess.Popen(
            [PYTHON, "-m", "jobset_runtime", "run", "--wait", "coordinator", "--timeout", "30", "--group", "on",
             "--group-port", str(port), "--master-addr", "ip", "--termination-log", str(tmp_path / f"log{index}"),
             "--", PYTHON, "-c", "import os; print('MASTER', os.environ['MASTER_ADDR'], os.environ['PET_MASTER_ADDR'])"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "MASTER 127.0.0.1 127.0.0.1" in out
        assert "Name or service not known" not in err
    assert "all 2 members joined" in outs[0][1]
