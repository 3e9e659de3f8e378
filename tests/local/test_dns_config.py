"""The pod's resolv.conf with dnsPolicy / dnsConfig (pkg/kubelet/network/dns/dns.go), and --mtu's bounds."""

import subprocess

from jobset_runtime import contract
from jobset_runtime.local import kubelet

import localfixtures as lf


def test_cluster_first_is_unchanged():
    assert kubelet.resolv_conf("ns", "198.18.0.1") == (
        "search ns.svc.cluster.local svc.cluster.local cluster.local\nnameserver 198.18.0.1\noptions ndots:5\n")


def test_dns_config_is_appended_to_cluster_first():
    text = kubelet.resolv_conf("ns", "198.18.0.1", dns_config={
        "nameservers": ["10.0.0.9", "198.18.0.1", "10.0.0.8", "10.0.0.7"], "searches": ["svc.cluster.local", "corp"],
        "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]})
    assert text == ("search ns.svc.cluster.local svc.cluster.local cluster.local corp\n"
                    "nameserver 198.18.0.1\nnameserver 10.0.0.9\nnameserver 10.0.0.8\noptions ndots:2 edns0\n")


def test_dns_policy_none_takes_only_dns_config():
    text = kubelet.resolv_conf("ns", "198.18.0.1", dns_policy="None",
                               dns_config={"nameservers": ["169.254.20.10"], "searches": ["ns.svc.cluster.local"]})
    assert text == "search ns.svc.cluster.local\nnameserver 169.254.20.10\n"


def test_mtu_out_of_range_is_a_config_error(tmp_path):
    js = lf.jobset("m", [("w", 1, 1, lf.py("pass"))])
    p = subprocess.run([*lf.local_argv(tmp_path, js, args=("--mtu", "40"))], env=lf.cli_env(),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == contract.EXIT_CONFIG
    assert "--mtu 40" in p.stderr and "Traceback" not in p.stderr
