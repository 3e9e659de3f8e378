"""Local "pods" for the MPI tests: one network + UTS namespace each, on a private bridge.

Each pod gets its own hostname and a non-loopback address (Open MPI needs both
to tell hosts apart, REFERENCE.md), and reaches the others and the embedded DNS
server on the bridge.  Real processes, real sockets; nothing leaves the machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PODEXEC = str(Path(__file__).with_name("podexec.py"))


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


# Each network's /16 is one of these, free on the host when it is brought up: two networks on
# one /16 (two test runs at once on a machine) share the host's route to it, and the DNS
# server's replies on the gateway then go out to the other run's bridge.
SUBNETS = [f"10.{n}" for n in range(88, 128)]
_LOCK = "/run/lock/jobset-runtime-test-podnet.lock"


def _used_subnets() -> set[str]:
    out = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True, check=True).stdout
    return {".".join(line.split(".", 2)[:2]) for line in out.splitlines() if line.startswith("10.")}


class PodNetwork:
    def __init__(self, tag: str, subnet: str | None = None):
        self.tag = tag
        self.bridge = f"jrm{tag}"
        self.subnet = subnet  # None: the first of SUBNETS free when up() runs
        self.gateway = ""
        self.pods: dict[str, tuple[str, str]] = {}  # hostname -> (netns, ip)

    def up(self) -> "PodNetwork":
        import fcntl

        os.makedirs(os.path.dirname(_LOCK), exist_ok=True)
        with open(_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # choose and take the subnet as one step
            if self.subnet is None:
                used = _used_subnets()
                free = [s for s in SUBNETS if s not in used]
                if not free:
                    raise RuntimeError(f"every test pod subnet ({SUBNETS[0]}-{SUBNETS[-1]}.0.0/16) is in use")
                self.subnet = free[0]
            self.gateway = f"{self.subnet}.0.1"
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/16", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        return self

    def add(self, hostname: str) -> str:
        n = len(self.pods) + 1
        ns, ip = f"jrm{self.tag}p{n}", f"{self.subnet}.{n // 250 + 1}.{n % 250 + 2}"
        host_if, pod_if = f"jrm{self.tag}h{n}", f"jrm{self.tag}c{n}"
        _ip("netns", "add", ns)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", pod_if)
        _ip("link", "set", pod_if, "netns", ns)
        _ip("link", "set", host_if, "master", self.bridge)
        _ip("link", "set", host_if, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{ip}/16", "dev", pod_if)
        _ip("-n", ns, "link", "set", pod_if, "up")
        self.pods[hostname] = (ns, ip)
        return ip

    def argv(self, hostname: str, argv: list[str]) -> list[str]:
        ns, _ = self.pods[hostname]
        return ["ip", "netns", "exec", ns, "unshare", "--uts", "--", sys.executable, PODEXEC, hostname, *argv]

    def pids(self, hostname: str) -> list[int]:
        """Every process in the pod's network namespace."""
        ns, _ = self.pods[hostname]
        return [int(p) for p in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()]

    def kill_pod(self, hostname: str) -> None:
        """SIGKILL every process in the pod's network namespace, as a node losing the pod does."""
        for pid in self.pids(hostname):
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass

    def down(self) -> None:
        for host in list(self.pods):
            self.kill_pod(host)
            ns, _ = self.pods.pop(host)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
