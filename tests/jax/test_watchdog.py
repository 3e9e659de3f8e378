"""The message our deadline ends with, from a real DNS server (no JAX needed)."""

import time

from jobset_runtime import contract
from jobset_runtime import jax as jrjax
from jobset_runtime.identity import PodMetadata, derive


def ident(job, pod, topology):
    return derive(PodMetadata(env={
        contract.IDENTITY_ENV["jobset_name"]: "ms",
        contract.IDENTITY_ENV["replicated_job"]: "slice",
        contract.IDENTITY_ENV["job_index"]: str(job),
        contract.IDENTITY_ENV["pod_index"]: str(pod),
        contract.IDENTITY_ENV["namespace"]: "tpu",
        contract.TOPOLOGY_ENV: topology,
    }))


def message(p, server):
    return jrjax._Watchdog(p, time.monotonic(), [server.nameserver], lambda m: None).message()


def fqdn(j, w):
    return f"ms-slice-{j}-{w}.ms.tpu.svc.cluster.local"


def test_coordinator_names_the_pods_without_dns_records(dns_server):
    p = jrjax.plan(ident(0, 0, "slice:20x8"), "tpu", environ={}, initialization_timeout=60, timeout=50)
    for j in range(20):
        for w in range(8):
            if (j, w) not in ((7, 3), (19, 7)):
                dns_server.set(fqdn(j, w), "10.0.0.1")
    text = message(p, dns_server)
    assert "did not start within 50s (process 0 of 160" in text
    assert "before JAX's initialization_timeout=60s" in text
    assert f"2 of 160 hosts of the JAX world have no DNS record, so their pods have not started: " \
           f"{fqdn(7, 3)}, {fqdn(19, 7)}" in text


def test_worker_looks_at_its_slice_and_finds_it_complete(dns_server):
    p = jrjax.plan(ident(3, 1, "slice:20x8"), "tpu", environ={}, initialization_timeout=60, timeout=50)
    assert len(p.watch_hosts) == 9
    for name in p.watch_hosts:
        dns_server.set(name, "10.0.0.2")
    dns_server.set(fqdn(5, 5), "10.0.0.3")
    text = message(p, dns_server)
    assert "All 9 hosts of this slice and the coordinator resolve in DNS, so a process has not joined" in text


def test_silent_dns_is_not_reported_as_missing_pods(dns_server):
    p = jrjax.plan(ident(0, 1, "slice:1x2"), "cpu", environ={}, initialization_timeout=4, timeout=2)
    dns_server.silent = True
    text = message(p, dns_server)
    assert "no DNS record" not in text
    assert "DNS did not answer in time for 2 hosts" in text and fqdn(0, 0) in text
