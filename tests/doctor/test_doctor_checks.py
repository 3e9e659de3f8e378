"""The doctor's checks on gathered facts (pure), its report, and its CLI outside a pod."""

import json
import subprocess
import sys

from jobset_runtime import contract, doctor
from jobset_runtime.doctor import Answer, Facts, ResolvConf, Status
from jobset_runtime.identity import PodMetadata, derive

POD_IP = "10.4.0.7"


def identity(**env):
    labels = {contract.JOBSET_NAME_KEY: "tr", contract.REPLICATED_JOB_NAME_KEY: "node",
              contract.JOB_INDEX_KEY: "0", contract.JOB_COMPLETION_INDEX_KEY: "1",
              contract.COORDINATOR_KEY: "tr-node-0-0.tr"}
    meta = PodMetadata(labels=labels, annotations=labels, namespace="default",
                       env={contract.TOPOLOGY_ENV: "node:1x2", contract.POD_IP_ENV: POD_IP, **env})
    return derive(meta), meta


SELF = "tr-node-0-1.tr.default.svc.cluster.local"
COORD = "tr-node-0-0.tr.default.svc.cluster.local"
CLUSTER_RESOLV = ("search default.svc.cluster.local svc.cluster.local cluster.local\n"
                  "nameserver 10.96.0.10\noptions ndots:5\n")
CACHE_RESOLV = CLUSTER_RESOLV.replace("10.96.0.10", "169.254.20.10")


def facts(**kw):
    ident, meta = identity()
    base = dict(identity=ident, sources=doctor._identity_sources(meta), resolv_conf=CLUSTER_RESOLV,
                route_interface="eth0", mtus={"eth0": 1460},
                lookups={SELF: [Answer("10.96.0.10:53", "ok", POD_IP)], COORD: [Answer("10.96.0.10:53", "ok", "10.4.0.2")]},
                secrets={"group token": ("/t", None), "ssh key": ("/k", "missing")},
                clock=("ok", 0.002, 0.0004))
    base.update(kw)
    return Facts(**base)


def by_name(results):
    return {c.name: c for c in results}


def test_a_healthy_pod_passes_and_says_where_values_came_from():
    results = doctor.checks(facts())
    assert doctor.exit_code(results) == 0
    r = by_name(results)
    assert all(c.status in (Status.OK, Status.SKIP) for c in results), doctor.render_text(results)
    assert r["identity"].summary == "tr-node-0-1: rank 1 of 2, coordinator tr-node-0-0"
    assert f"pod_index = 1  (annotation {contract.JOB_COMPLETION_INDEX_KEY})" in r["identity"].details
    assert f"topology = node:1x2  (env {contract.TOPOLOGY_ENV})" in r["identity"].details
    assert r["dns.self"].summary == f"{SELF} -> {POD_IP}"
    assert r["secrets"].summary == "group token readable by uid 0"
    assert "+2 ms" in r["clock"].summary


def test_resolv_conf_parse():
    rc = ResolvConf.parse("# c\nsearch a b\nnameserver 1.2.3.4\nnameserver 5.6.7.8\noptions ndots:5 timeout:1\n")
    assert rc == ResolvConf(("1.2.3.4", "5.6.7.8"), ("a", "b"), 5)
    assert ResolvConf.parse("").ndots == 1


def test_a_node_local_cache_is_a_warning_with_the_fix():
    c = by_name(doctor.checks(facts(resolv_conf=CACHE_RESOLV)))["resolv.conf"]
    assert c.status is Status.WARN and "169.254.20.10" in c.summary
    assert contract.NAMESERVERS_ENV in c.fix
    # bypassed by JOBSET_RUNTIME_NAMESERVERS: fine
    c = by_name(doctor.checks(facts(resolv_conf=CACHE_RESOLV, env_nameservers="10.96.0.10")))["resolv.conf"]
    assert c.status is Status.OK and "bypassed" in c.summary


def test_a_malformed_nameservers_variable_fails(tmp_path):
    f = doctor.gather({contract.NAMESERVERS_ENV: "not-an-ip", contract.PODINFO_ENV: str(tmp_path)},
                      resolv_conf=str(tmp_path / "none"), clock=False)
    c = by_name(doctor.checks(f))["resolv.conf"]
    assert c.status is Status.FAIL and "'not-an-ip' is not a nameserver address" in c.summary


def test_a_stale_negative_answer_is_named():
    lookups = {SELF: [Answer("169.254.20.10:53", "NXDOMAIN"), Answer("10.96.0.10:53", "ok", POD_IP)],
               COORD: [Answer("169.254.20.10:53", "ok", "10.4.0.2"), Answer("10.96.0.10:53", "ok", "10.4.0.2")]}
    results = doctor.checks(facts(lookups=lookups))
    c = by_name(results)["dns.self"]
    assert c.status is Status.FAIL and doctor.exit_code(results) == 1
    assert "169.254.20.10:53 (a node-local cache) answers NXDOMAIN while 10.96.0.10:53 has 10.4.0.7" in c.summary
    assert "stale negative answer" in c.fix


def test_nxdomain_only_from_a_cache_points_at_the_cache():
    c = by_name(doctor.checks(facts(lookups={SELF: [Answer("169.254.20.10:53", "NXDOMAIN")], COORD: []})))
    assert c["dns.self"].status is Status.FAIL and "node-local cache 169.254.20.10" in c["dns.self"].fix
    assert c["dns.coordinator"].status is Status.SKIP


def test_an_old_ip_for_our_own_name_fails():
    c = by_name(doctor.checks(facts(lookups={SELF: [Answer("10.96.0.10:53", "ok", "10.4.0.99")]})))["dns.self"]
    assert c.status is Status.FAIL and "not this pod's 10.4.0.7" in c.summary


def test_mtu():
    assert by_name(doctor.checks(facts(mtus={"eth0": 1000})))["mtu"].status is Status.FAIL
    assert by_name(doctor.checks(facts(mtus={"eth0": 1500, "eth1": 900})))["mtu"].status is Status.OK  # route's
    assert by_name(doctor.checks(facts(mtus={})))["mtu"].status is Status.SKIP


def test_unreadable_secret_fails_with_the_fsgroup_fix():
    c = by_name(doctor.checks(facts(secrets={"ssh key": ("/k", "Permission denied"), "group token": ("/t", None)})))
    assert c["secrets"].status is Status.FAIL and "fsGroup" in c["secrets"].fix
    assert "ssh key at /k is not readable by uid 0" in c["secrets"].summary


def test_clock_offset_warns():
    c = by_name(doctor.checks(facts(clock=("ok", -3.5, 0.001))))["clock"]
    assert c.status is Status.WARN and "-3500 ms" in c.summary


def test_no_metadata_fails_identity_and_skips_dns():
    results = doctor.checks(facts(identity=None, identity_error="no pod metadata", sources=[]))
    r = by_name(results)
    assert r["identity"].status is Status.FAIL and r["dns"].status is Status.SKIP


def test_reports():
    results = doctor.checks(facts(mtus={"eth0": 1000}))
    report = json.loads(doctor.render_json(results))
    assert report["ok"] is False
    assert [c["name"] for c in report["checks"] if c["status"] == "fail"] == ["mtu"]
    text = doctor.render_text(results)
    assert text.splitlines()[-1] == "1 check(s) failed: mtu" and "fix: packets over 1000 bytes" in text


def test_cli_outside_a_pod_exits_1_with_json(cli_env, tmp_path):
    p = subprocess.run([sys.executable, "-m", "jobset_runtime", "doctor", "--format", "json"], env={
        **cli_env, contract.PODINFO_ENV: str(tmp_path / "none")}, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stderr
    report = json.loads(p.stdout)
    assert {c["name"]: c["status"] for c in report["checks"]}["identity"] == "fail"
    assert "Traceback" not in p.stderr
