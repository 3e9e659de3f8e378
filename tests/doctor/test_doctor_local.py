"""`jobset-runtime doctor` in pods of the local runner: real namespaces, real cluster DNS,
a real caching resolver (dnsmasq) as the node-local DNS cache, a small MTU on the veths."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobset_runtime import contract, manifests
from jobset_runtime.local.pods import GATEWAY, netns_available

ROOT = Path(__file__).resolve().parents[2]
POD = str(Path(__file__).resolve().parent / "doctor_pod.py")
CACHE_IP = "169.254.20.10"  # NodeLocal DNSCache's default address


def _skip_unless_netns():
    ok, why = netns_available()
    if not ok:
        pytest.skip(f"the local runner's namespaces are unavailable: {why}")


def run_pods(tmp_path, mode, *, edit=None, runner_args=()):
    out = tmp_path / "out"
    out.mkdir()
    docs = manifests.torch(name="dr", image="unused", command=["unused"], nodes=2)
    js = docs[-1]
    pod = js["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    main = pod["containers"][0]
    # The script instead of jobset-run: with a stale cache in the path the wrapper's own
    # wait would never end, which is the failure the doctor is for.
    main["command"] = [sys.executable, POD, mode]
    main["env"] += [{"name": "DOCTOR_OUT", "value": str(out)}, {"name": "DOCTOR_CLUSTER_DNS", "value": GATEWAY},
                    {"name": "DOCTOR_CACHE", "value": CACHE_IP}]
    if edit:
        edit(pod)
    path = tmp_path / "js.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSET_RUNTIME_")}
    env["PYTHONPATH"] = str(ROOT)
    p = subprocess.run([sys.executable, "-m", "jobset_runtime.local.cli", "run", str(path), "--run-dir",
                        str(tmp_path / "run"), "--timeout", "90", *runner_args],
                       env=env, capture_output=True, text=True, timeout=120)
    reports = {f.name[:-5]: json.loads(f.read_text()) for f in out.glob("*.json")}
    return p, reports


def statuses(report):
    return {c["name"]: c["status"] for c in report["report"]["checks"]}


def check(report, name):
    return next(c for c in report["report"]["checks"] if c["name"] == name)


@pytest.mark.netns
def test_a_healthy_pod_passes(tmp_path):
    _skip_unless_netns()
    p, reports = run_pods(tmp_path, "healthy")
    assert p.returncode == 0, p.stdout + p.stderr
    for host in ("dr-node-0-0", "dr-node-0-1"):
        r = reports[f"{host}.plain"]
        assert r["rc"] == 0, json.dumps(r["report"], indent=1)
        s = statuses(r)
        assert s["identity"] == s["resolv.conf"] == s["mtu"] == s["dns.self"] == s["secrets"] == "ok"
        assert check(r, "mtu")["summary"] == "eth0 MTU 1500"
        assert "group token readable" in check(r, "secrets")["summary"]
        assert r["report"]["ok"] is True
        wrapper = reports[f"{host}.wrapper"]
        assert wrapper["rc"] == 0 and "all checks passed" in wrapper["stderr"], wrapper["stderr"]
    worker = reports["dr-node-0-1.plain"]
    assert statuses(worker)["dns.coordinator"] == "ok"
    # the kernel on the coordinator's side answers ICMP timestamps: one clock here, so ~0
    assert statuses(worker)["clock"] == "ok", check(worker, "clock")
    assert statuses(reports["dr-node-0-0.plain"])["clock"] == "skip"  # the coordinator itself


@pytest.mark.netns
@pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="needs dnsmasq as the node-local cache")
def test_stale_nxdomain_from_a_node_local_cache_and_a_small_mtu(tmp_path):
    _skip_unless_netns()

    def node_local_cache(pod):
        # dnsPolicy None + dnsConfig: the pod's only nameserver is the cache, as with NodeLocal
        # DNSCache; the cache keeps negative answers for 300 s (dnsmasq --min-cache-ttl).
        pod["dnsPolicy"] = "None"
        pod["dnsConfig"] = {"nameservers": [CACHE_IP], "searches": ["default.svc.cluster.local"],
                            "options": [{"name": "ndots", "value": "5"}]}
        script = (f"ip addr add {CACHE_IP}/32 dev lo && exec dnsmasq --keep-in-foreground --no-resolv --no-hosts "
                  f"--user=root --pid-file= --listen-address={CACHE_IP} --bind-interfaces --server={GATEWAY} "
                  "--min-cache-ttl=300 --cache-size=1000")
        pod["initContainers"] = [{"name": "node-local-dns", "image": "unused", "restartPolicy": "Always",
                                  "command": ["/bin/sh", "-c", script]}]

    p, reports = run_pods(tmp_path, "stale", edit=node_local_cache, runner_args=("--dns-delay", "8", "--mtu", "1000"))
    assert p.returncode == 0, p.stdout + p.stderr
    for host in ("dr-node-0-0", "dr-node-0-1"):
        primed = reports[f"{host}.primed"]
        assert set(primed["failed"].values()) == {"NXDOMAIN"}, primed  # the cache was asked before the records existed

        plain = reports[f"{host}.plain"]
        assert plain["rc"] == 1 and plain["report"]["ok"] is False
        s = statuses(plain)
        assert s["resolv.conf"] == "warn" and CACHE_IP in check(plain, "resolv.conf")["summary"]
        assert s["dns.self"] == "fail" and "NXDOMAIN" in check(plain, "dns.self")["summary"]
        assert f"node-local cache {CACHE_IP}" in check(plain, "dns.self")["fix"]
        assert s["mtu"] == "fail" and check(plain, "mtu")["summary"] == "eth0 has MTU 1000, below 1280"

        direct = reports[f"{host}.direct"]
        assert direct["rc"] == 1
        stale = check(direct, "dns.self")
        assert stale["status"] == "fail"
        assert f"{CACHE_IP}:53 (a node-local cache) answers NXDOMAIN while {GATEWAY}:53 has 198.18." in stale["summary"]
        assert contract.NAMESERVERS_ENV in stale["fix"]
        assert statuses(direct)["resolv.conf"] == "ok"  # the cache is bypassed for the runtime's own lookups
