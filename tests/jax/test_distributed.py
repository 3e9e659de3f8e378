"""Real jax.distributed on CPU: 4 processes (2 slices x 2 hosts) on loopback, names from a real DNS server."""

import json
import time

import pytest

pytest.importorskip("jax", reason="jax is a test dependency of this area (pip install jax)")

import jaxcluster as jc

from jobset_runtime import contract

JOBSET, RJOB, SLICES, HOSTS = "demo", "slice", 2, 2


def launch(dns_server, tmp_path, args, *, ranks=None, delay=None, extra=None, register=None):
    """Start the demo for the given ranks; `delay`: {rank: seconds} before that one starts."""
    pods = jc.pods(JOBSET, RJOB, SLICES, HOSTS)
    for pod in pods:
        if register is None or pod.rank in register:
            dns_server.set(pod.fqdn, pod.ip)
    ranks = range(len(pods)) if ranks is None else ranks
    delay = delay or {}
    procs = {}
    order = sorted(ranks, key=lambda r: delay.get(r, 0))
    t0 = time.monotonic()
    for rank in order:
        wait = delay.get(rank, 0) - (time.monotonic() - t0)
        if wait > 0:
            time.sleep(wait)
        env = jc.pod_env(pods[rank], jobset=JOBSET, rjob=RJOB, slices=SLICES, hosts=HOSTS,
                         nameserver=dns_server.nameserver, tmp=tmp_path, extra=extra)
        procs[rank] = jc.start(pods[rank], env, args)
    return pods, procs


def reports(results):
    out = {}
    for rank, (code, stdout, stderr, _) in results.items():
        assert code == 0, f"rank {rank} exited {code}:\n{stderr[-3000:]}"
        # gloo's C++ prints to the same stdout, sometimes on the report's line: decode from its start.
        starts = [line[line.find('{"process_id"'):] for line in stdout.splitlines() if '{"process_id"' in line]
        assert starts, f"rank {rank} printed no report:\n{stdout}\n{stderr[-2000:]}"
        out[rank] = json.JSONDecoder().raw_decode(starts[-1])[0]
    return out


def check_world(rep, pods):
    assert sorted(rep) == [p.rank for p in pods]
    for pod in pods:
        r = rep[pod.rank]
        # Every process checked the psum itself; check again what it saw.
        assert r["ok"] is True
        assert r["devices"] == 8 and r["local_devices"] == 2
        assert r["psum"] == r["expected_psum"] == 36.0
        assert r["process_count"] == 4
        assert (r["slice_id"], r["worker_id"]) == (pod.slice_id, pod.worker_id)
        assert r["process_index"] == r["process_id"] == pod.slice_id * HOSTS + pod.worker_id
        assert sorted(row[0] for row in r["everyone"]) == [0, 1, 2, 3]
        assert r["everyone"] == [[p.rank, p.slice_id, p.worker_id] for p in pods]


def test_two_slices_of_two_hosts_psum(dns_server, tmp_path):
    port = jc.coordinator_port()
    pods, procs = launch(dns_server, tmp_path, ["--port", str(port), "--initialization-timeout", "60",
                                                "--timeout", "50", "--shutdown-timeout", "20"])
    check_world(reports(jc.collect(procs, 90)), pods)


def test_coordinator_starting_10s_late_still_succeeds(dns_server, tmp_path):
    port = jc.coordinator_port()
    # Its DNS record is late too, as for a pod that is scheduled late.
    pods = jc.pods(JOBSET, RJOB, SLICES, HOSTS)
    dns_server.set(pods[0].fqdn, pods[0].ip, visible_after=10)
    pods, procs = launch(dns_server, tmp_path, ["--port", str(port), "--initialization-timeout", "60",
                                                "--timeout", "50", "--shutdown-timeout", "20"],
                         delay={0: 10.0}, register={1, 2, 3})
    results = jc.collect(procs, 100)
    check_world(reports(results), pods)
    # The others really waited for it (no restart: each process ran once and succeeded).
    assert all("waiting for coordinator" in results[r][2] for r in (1, 2, 3))


def test_missing_peer_is_named_before_jax_aborts(dns_server, tmp_path):
    """demo-slice-1-1 never starts and never gets a DNS record (a pod that was never scheduled)."""
    port = jc.coordinator_port()
    init_timeout, ours = 40, 10
    pods, procs = launch(dns_server, tmp_path, ["--port", str(port), "--initialization-timeout", str(init_timeout),
                                                "--timeout", str(ours)], ranks=[0, 1, 2], register={0, 1, 2})
    t0 = time.monotonic()
    results = jc.collect(procs, init_timeout + 30)
    missing = pods[3].fqdn
    for rank, (code, _, stderr, seconds) in results.items():
        # Our exit (69), not JAX's abort (SIGABRT: -6 / 134), and well before its timeout.
        assert code == contract.EXIT_PEERS_TIMEOUT, f"rank {rank} exited {code}:\n{stderr[-3000:]}"
        assert seconds < init_timeout
        assert "did not start within 10s" in stderr
        message = (tmp_path / f"termination-{rank}").read_text()
        assert "jax.distributed did not start" in message
    assert time.monotonic() - t0 < init_timeout
    # The coordinator sees every host; slice 1's worker sees its own slice: both name the missing pod.
    for rank in (0, 2):
        assert f"have no DNS record, so their pods have not started: {missing}" in results[rank][2]
        assert missing in (tmp_path / f"termination-{rank}").read_text()
    # Slice 0's worker finds its slice complete and says so.
    assert "resolve in DNS, so a process has not joined" in results[1][2]


def test_coordinator_that_never_listens_is_named(dns_server, tmp_path):
    """The coordinator's pod exists in DNS but its program never opens the port: PeersTimeout, exit 69."""
    port = jc.coordinator_port()
    pods, procs = launch(dns_server, tmp_path, ["--port", str(port), "--initialization-timeout", "30",
                                                "--timeout", "8"], ranks=[1])
    code, _, stderr, _ = jc.collect(procs, 40)[1]
    assert code == contract.EXIT_PEERS_TIMEOUT, stderr[-3000:]
    assert f"to accept TCP connections on port {port}: {pods[0].fqdn}" in stderr
    assert "Traceback" not in stderr
    assert pods[0].fqdn in (tmp_path / "termination-1").read_text()


def test_multislice_training_example_on_cpu(dns_server, tmp_path):
    port = jc.coordinator_port()
    pods = jc.pods(JOBSET, RJOB, SLICES, HOSTS)
    for pod in pods:
        dns_server.set(pod.fqdn, pod.ip)
    procs = {}
    for pod in pods:
        env = jc.pod_env(pod, jobset=JOBSET, rjob=RJOB, slices=SLICES, hosts=HOSTS,
                         nameserver=dns_server.nameserver, tmp=tmp_path)
        procs[pod.rank] = jc.start(pod, env, ["--port", str(port), "--devices", "2", "--initialization-timeout", "60",
                                              "--timeout", "50"], program=jc.ROOT / "examples" / "jax_multislice_train.py")
    rep = reports(jc.collect(procs, 90))
    for rank, r in rep.items():
        assert r["ok"] is True and r["platform"] == "cpu"
        assert r["process_id"] == rank
        assert r["mesh"] == {"slice": 2, "data": 4}
        assert r["losses"] == rep[0]["losses"]  # one model, the same on every process
