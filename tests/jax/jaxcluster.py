"""Run a JobSet's JAX processes on loopback: real processes, real jax.distributed, real DNS.

Each process gets its identity from JOBSET_RUNTIME_* env (as a hand-written
JobSet sets them from fieldRefs) and asks the embedded DNS server, which
serves every pod's FQDN with a 127.0.0.x address of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from jobset_runtime import addresses, contract
from jobset_runtime.identity import hostname_of

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "jax_cpu_demo.py"
NAMESPACE = "default"


def coordinator_port() -> int:
    """A free port for JAX's coordinator, which binds `[::]:PORT` (jax/_src/distributed.py,
    default_coordinator_bind_address)."""
    return addresses.free_port("::")


@dataclass
class Pod:
    slice_id: int
    worker_id: int
    rank: int
    hostname: str
    fqdn: str
    ip: str


def pods(jobset: str, rjob: str, slices: int, hosts: int, first_ip: int = 2) -> list[Pod]:
    out = []
    for j in range(slices):
        for p in range(hosts):
            rank = j * hosts + p
            host = hostname_of(jobset, rjob, j, p)
            out.append(Pod(j, p, rank, host, f"{host}.{jobset}.{NAMESPACE}.svc.cluster.local", f"127.0.0.{first_ip + rank}"))
    return out


def pod_env(pod: Pod, *, jobset: str, rjob: str, slices: int, hosts: int, nameserver: str,
            tmp: Path, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(contract.ENV_PREFIX) and not k.startswith("JAX_")}
    env.update({
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "JAX_PLATFORMS": "cpu",
        contract.PODINFO_ENV: "",  # no downward-API dir: identity from env only
        contract.IDENTITY_ENV["jobset_name"]: jobset,
        contract.IDENTITY_ENV["replicated_job"]: rjob,
        contract.IDENTITY_ENV["replicated_job_replicas"]: str(slices),
        contract.IDENTITY_ENV["job_index"]: str(pod.slice_id),
        contract.IDENTITY_ENV["pod_index"]: str(pod.worker_id),
        contract.IDENTITY_ENV["namespace"]: NAMESPACE,
        contract.TOPOLOGY_ENV: f"{rjob}:{slices}x{hosts}",
        contract.NAMESERVERS_ENV: nameserver,
        contract.TERMINATION_LOG_ENV: str(tmp / f"termination-{pod.rank}"),
    })
    env.pop(contract.PODINFO_ENV)
    env.update(extra or {})
    return env


def start(pod: Pod, env: dict, args: list[str], program: Path = DEMO) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(program), *args], env=env, cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def collect(procs: dict, timeout: float) -> dict:
    """{rank: (exit code, stdout, stderr, seconds)}; kills whatever outlives `timeout`."""
    t0 = time.monotonic()
    out = {}
    for rank, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=max(0.1, timeout - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        out[rank] = (proc.returncode, stdout, stderr, time.monotonic() - t0)
    return out
