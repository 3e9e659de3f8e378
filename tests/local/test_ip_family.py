"""IPv6-only and dual-stack pods (`local run --ip-family`): the whole path, end to end.

The pods' addresses, /etc/hosts, status.podIP(s), cluster DNS (AAAA), jobset-run's waits
(which ask for the pod's own family), the fail-fast group channel and a TCP program that
reaches its coordinator by name.
"""

import json
import sys

import localfixtures as lf
import pytest

pytestmark = pytest.mark.netns

# Each pod: who it is, what it resolves its peer to, and a TCP round trip to pod 0.
PROBE = r"""
import json, os, socket, subprocess, sys, time
me = socket.gethostname()
peer = "ipf-node-0-1" if me.endswith("-0-0") else "ipf-node-0-0"
fqdn = peer + ".ipf.default.svc.cluster.local"
families = sorted({ai[0].name for ai in socket.getaddrinfo(fqdn, 7000, type=socket.SOCK_STREAM)})
env = json.loads(subprocess.run(["jobset-runtime", "env"], capture_output=True, text=True, check=True).stdout)
if me.endswith("-0-0"):
    srv = socket.create_server(("::", 7000), family=socket.AF_INET6, dualstack_ipv6=True)
    conn, addr = srv.accept()
    conn.sendall(b"ok")
    peer_seen = addr[0]
else:
    for _ in range(100):
        try:
            c = socket.create_connection((fqdn, 7000), timeout=5)
            break
        except OSError:
            time.sleep(0.1)
    assert c.recv(2) == b"ok"
    peer_seen = c.getpeername()[0]
print("PROBE " + json.dumps({"me": me, "families": families, "pod_ip": env["pod_ip"],
      "pod_ips": os.environ["POD_IPS"], "seen": peer_seen, "hosts": open("/etc/hosts").read().splitlines()[-1]}),
      flush=True)
"""


def probe_jobset() -> list:
    """A generated torch JobSet of 2 pods (downward API, group token, jobset-run) running PROBE."""
    from jobset_runtime import manifests

    docs = manifests.torch(nodes=2, name="ipf", image="ignored", max_restarts=0,
                           command=[sys.executable, "-c", PROBE])
    pod = docs[-1]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    pod["containers"][0]["env"].append({"name": "POD_IPS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIPs"}}})
    return docs


def probes(stdout: str) -> dict:
    out = {}
    for line in stdout.splitlines():
        if "PROBE " in line:
            d = json.loads(line.split("PROBE ", 1)[1])
            out[d["me"]] = d
    return out


@pytest.mark.parametrize("family", ["ipv6", "dual"])
def test_pods_of_each_family_find_each_other(tmp_path, family):
    env = lf.cli_env()
    env["PATH"] = f"{sys.executable.rsplit('/', 1)[0]}:{env['PATH']}"
    import subprocess

    r = subprocess.run(lf.local_argv(tmp_path, *probe_jobset(), args=["--ip-family", family, "--timeout", "90"]),
                       env=env, capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    seen = probes(r.stdout)
    assert set(seen) == {"ipf-node-0-0", "ipf-node-0-1"}, r.stdout[-3000:]
    for d in seen.values():
        assert d["pod_ip"].startswith("fd6a:7372::")  # IPv6 first in both
        ips = d["pod_ips"].split(",")
        assert ips[0] == d["pod_ip"]
        if family == "dual":
            assert len(ips) == 2 and ips[1].startswith("198.18.")
            assert d["families"] == ["AF_INET", "AF_INET6"]
        else:
            assert ips == [d["pod_ip"]] and d["families"] == ["AF_INET6"]
        assert d["hosts"].split("\t")[0] == ips[-1]  # the kubelet writes one line per pod IP
    # The client reached the server at one of its addresses, and the server saw one of the client's
    # (which family a dual-stack client picks is the system resolver's choice, RFC 6724).
    for a, b in (("ipf-node-0-1", "ipf-node-0-0"), ("ipf-node-0-0", "ipf-node-0-1")):
        assert seen[a]["seen"] in seen[b]["pod_ips"].split(",")


def test_the_demo_runs_on_ipv6_only_pods(tmp_path):
    """The Quickstart demo (DNS waits, the group channel, a TCP sum) on an IPv6-only network."""
    import subprocess

    env = lf.cli_env()
    env["PATH"] = f"{sys.executable.rsplit('/', 1)[0]}:{env['PATH']}"
    r = subprocess.run([sys.executable, "-m", "jobset_runtime.local.cli", "run", str(lf.ROOT / "examples" / "demo.yaml"),
                        "--ip-family", "ipv6", "--timeout", "90", "--run-dir", str(tmp_path)], cwd=lf.ROOT, env=env,
                       capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    lines = [line for line in r.stdout.splitlines() if "sum of ranks 6 (expected 6)" in line]
    assert len(lines) == 4 and all("IP fd6a:7372::" in line for line in lines), r.stdout[-3000:]
    assert "group: coordinator listening on [fd6a:7372::" in r.stdout + r.stderr


def test_loopback_mode_refuses_ipv6(tmp_path):
    r = lf.run_local(tmp_path, *probe_jobset(), args=["--mode", "loopback", "--ip-family", "ipv6"])
    assert r.returncode == 2 and "--ip-family ipv6 needs pods in network namespaces" in r.stderr
    assert "Traceback" not in r.stderr
