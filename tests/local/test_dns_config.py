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


def test_mtu_below_ipv6s_minimum_is_refused_for_ipv6_and_dual(tmp_path):
    """1280 bytes is IPv6's minimum link MTU (RFC 8200): below it, with IPv6 pods, exit 2 saying
    so before anything is set up; the same MTU stays valid for IPv4 pods."""
    js = lf.jobset("m", [("w", 1, 1, lf.py("pass"))])
    for family in ("ipv6", "dual"):
        p = subprocess.run([*lf.local_argv(tmp_path, js, args=("--mtu", "1279", "--ip-family", family))],
                           env=lf.cli_env(), capture_output=True, text=True, timeout=60)
        assert p.returncode == contract.EXIT_CONFIG, p.stderr
        assert f"--mtu 1279 with --ip-family {family}: IPv6 needs an MTU of at least 1280" in p.stderr
        assert "Traceback" not in p.stderr and not (tmp_path / "run").exists()
    from jobset_runtime.local.cli import check_mtu

    check_mtu(1279, "ipv4")
    check_mtu(1280, "ipv6")
    check_mtu(None, "dual")


def test_ipv6_pods_at_the_minimum_mtu(tmp_path):
    """--mtu 1280, IPv6's minimum, is accepted, and the pod's interface has it and its IPv6 address."""
    import pytest

    why = lf.netns_unavailable()
    if why:
        pytest.skip(why)
    check = ("assert open('/sys/class/net/eth0/mtu').read().strip() == '1280'\n"
             "assert any(l.startswith('fd6a7372') for l in open('/proc/net/if_inet6')), 'no IPv6 address'\n")
    js = lf.jobset("m", [("w", 1, 1, lf.py(check))])
    p = lf.run_local(tmp_path, js, args=("--mtu", "1280", "--ip-family", "ipv6", "--mode", "netns"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]


def test_cluster_backend_refuses_the_embedded_runners_network_options(tmp_path):
    """The node agent of `--backend cluster` runs IPv4 pods at the default MTU: asking it for
    IPv6 or an MTU is exit 2 before anything starts, not a run that quietly ignores them."""
    import pytest

    from jobset_runtime.extras import missing

    if missing(["lightkube", "cryptography"]):
        pytest.skip("the cluster extra is not installed")
    js = lf.jobset("m", [("w", 1, 1, lf.py("pass"))])
    for args, named in ((("--ip-family", "ipv6"), "--ip-family ipv6"), (("--mtu", "1400"), "--mtu 1400")):
        p = subprocess.run([*lf.local_argv(tmp_path, js, args=("--backend", "cluster", *args))], env=lf.cli_env(),
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == contract.EXIT_CONFIG, p.stderr
        assert f"{named}: the cluster backend's node agent runs its pods on IPv4" in p.stderr, p.stderr
        assert "--backend embedded" in p.stderr and "Traceback" not in p.stderr
