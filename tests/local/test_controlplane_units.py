"""The control plane's pure parts: build inputs, certificates, webhook configurations,
pod status, cluster DNS records, node placement.  No binaries needed."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import sys

import pytest
import yaml
from localfixtures import ROOT

from jobset_runtime import contract
from jobset_runtime.local.controlplane import build, certs, clusterdns, components, podstatus
from jobset_runtime.local.controlplane.node import parse_capacity, parse_labels
from jobset_runtime.local.controlplane.podworkers import NodePod, referenced_objects
from jobset_runtime.local.controlplane.run import placement

K8S_GO_MOD = """module k8s.io/kubernetes

go 1.26.0

require (
\tk8s.io/api v0.0.0
\tgithub.com/spf13/cobra v1.10.2
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
\tgithub.com/foo/bar => github.com/foo/bar v1.0.0
)
"""


def test_staging_modules_are_every_local_replace_and_only_those():
    assert build.staging_modules(K8S_GO_MOD) == ["k8s.io/api", "k8s.io/client-go"]
    mod = build.kubernetes_go_mod(build.staging_modules(K8S_GO_MOD))
    assert f"require k8s.io/kubernetes {contract.KUBERNETES_VERSION}" in mod
    assert f"replace k8s.io/client-go => k8s.io/client-go {contract.KUBERNETES_STAGING_VERSION}" in mod
    assert "foo/bar" not in mod


def test_a_go_mod_without_staging_is_refused():
    with pytest.raises(build.BuildError, match="no staging module"):
        build.staging_modules("module example.com/x\n\ngo 1.26.0\n")


def test_version_is_stamped_for_both_version_packages():
    flags = build.version_ldflags()
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {pkg}.gitVersion={contract.KUBERNETES_VERSION}" in flags
        assert f"-X {pkg}.gitMinor=36" in flags


def test_missing_binaries_name_the_build_command_and_the_env_var(tmp_path, monkeypatch):
    from jobset_runtime.errors import ConfigError
    from jobset_runtime.local.controlplane import binaries

    monkeypatch.setenv(contract.CONTROL_PLANE_ENV, str(tmp_path))
    (tmp_path / "etcd").write_text("")
    with pytest.raises(ConfigError) as e:
        binaries.locate()
    assert contract.CONTROL_PLANE_ENV in str(e.value) and "kube-apiserver" in str(e.value)
    assert contract.CONTROL_PLANE_BUILD_COMMAND in str(e.value)
    assert e.value.exit_code == 2


def test_cli_without_binaries_exits_2_naming_the_fix(tmp_path):
    env = {"PATH": "/usr/bin:/bin", contract.CONTROL_PLANE_ENV: str(tmp_path / "nowhere"),
           "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "jobset_runtime", "local", "cluster", "up",
                        "--state-dir", str(tmp_path / "st")], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert contract.CONTROL_PLANE_ENV in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "st").exists()


def test_certificates_chain_and_names(tmp_path):
    ca = certs.make_ca("test-ca")
    dns, ips = certs.apiserver_names(components.SERVICE_IP, "cluster.local")
    srv = certs.issue(ca, "kube-apiserver", dns=dns, ips=ips, server=True)
    cli = certs.issue(ca, "admin", org="system:masters", client=True)
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    san = srv.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "kubernetes.default.svc.cluster.local" in san.get_values_for_type(x509.DNSName)
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", components.SERVICE_IP]
    assert cli.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    srv.cert.verify_directly_issued_by(ca.cert)
    cli.cert.verify_directly_issued_by(ca.cert)
    # Python's TLS accepts the pair: the CA file and the server's cert/key load together.
    certs.write(str(tmp_path / "ca.crt"), ca.cert_pem)
    certs.write(str(tmp_path / "s.crt"), srv.cert_pem)
    certs.write(str(tmp_path / "s.key"), srv.key_pem, private=True)
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    ctx.load_cert_chain(str(tmp_path / "s.crt"), str(tmp_path / "s.key"))
    assert (tmp_path / "s.key").stat().st_mode & 0o777 == 0o600


WEBHOOKS = """---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: mutating-webhook-configuration
webhooks:
- admissionReviewVersions: [v1]
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /mutate-jobset-x-k8s-io-v1alpha2-jobset}
  failurePolicy: Fail
  name: mjobset.kb.io
  rules:
  - {apiGroups: [jobset.x-k8s.io], apiVersions: [v1alpha2], operations: [CREATE], resources: [jobsets]}
  sideEffects: None
- admissionReviewVersions: [v1]
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /mutate--v1-pod}
  failurePolicy: Fail
  name: mpod.kb.io
  rules:
  - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}
  sideEffects: None
"""


def test_webhook_configurations_point_at_loopback_with_our_ca():
    hooks = components.webhook_configurations(WEBHOOKS, 9443, b"PEM")
    assert [h["metadata"]["name"] for h in hooks] == ["jobset-mutating-webhook-configuration"]
    js_hook, pod_hook = hooks[0]["webhooks"]
    assert js_hook["clientConfig"] == {"url": "https://127.0.0.1:9443/mutate-jobset-x-k8s-io-v1alpha2-jobset",
                                       "caBundle": base64.b64encode(b"PEM").decode()}
    assert "objectSelector" not in js_hook
    assert pod_hook["objectSelector"]["matchExpressions"][0]["key"] == contract.JOBSET_NAME_KEY


def test_jobset_config_turns_internal_certs_off_and_binds_loopback(tmp_path):
    lay = components.Layout(tmp_path)
    cfg = yaml.safe_load(components.jobset_config(lay, components.Ports(6443, 1, 2, 9443, 8081)))
    assert cfg["internalCertManagement"] == {"enable": False}
    assert cfg["webhook"] == {"host": "127.0.0.1", "port": 9443, "certDir": str(tmp_path / "pki" / "webhook")}
    assert cfg["health"]["healthProbeBindAddress"] == "127.0.0.1:8081"


POD = {
    "metadata": {"name": "js-w-0-0-abcde", "namespace": "ns1", "uid": "u1",
                 "annotations": {contract.JOB_COMPLETION_INDEX_KEY: "0"}, "labels": {"a": "b"}},
    "spec": {"hostname": "js-w-0-0", "subdomain": "js", "restartPolicy": "Never",
             "initContainers": [{"name": "init", "image": "i"}, {"name": "side", "restartPolicy": "Always"}],
             "containers": [{"name": "main", "image": "img", "env": [
                 {"name": "S", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "k"}}},
                 {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}],
                 "envFrom": [{"configMapRef": {"name": "cm2"}}]}],
             "volumes": [{"name": "v", "secret": {"secretName": "sec2"}}, {"name": "e", "emptyDir": {}}]},
}


def test_referenced_objects_are_every_secret_and_configmap():
    assert referenced_objects(POD["spec"]) == {("Secret", "sec"), ("ConfigMap", "cm"), ("ConfigMap", "cm2"),
                                                ("Secret", "sec2")}


def test_pod_status_follows_the_kubelet():
    pod = NodePod(POD, "node-0")
    assert pod.index == 0 and pod.hostname == "js-w-0-0"
    assert [c.kind for c in pod.init_containers] == ["init", "sidecar"]
    st = pod.state.status()
    assert st["phase"] == "Pending"
    assert st["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}
    assert {c["type"]: c["status"] for c in st["conditions"]}["Initialized"] == "False"
    pod.state.sandbox, pod.state.pod_ip, pod.state.initialized, pod.state.phase = True, "198.18.0.2", True, "Running"
    cs = pod.state.containers[0]
    cs.running_since, cs.run, cs.started, cs.ready, cs.waiting_reason = "2026-01-01T00:00:00Z", 1, True, True, ""
    pod.state.ready = True
    st = pod.state.status()
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["ContainersReady"]["status"] == "True"
    assert st["podIP"] == "198.18.0.2" and st["podIPs"] == [{"ip": "198.18.0.2"}]
    assert st["containerStatuses"][0]["state"] == {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
    assert st["containerStatuses"][0]["containerID"] == "jobset-runtime://u1-main-1"
    ready_since = conds["Ready"]["lastTransitionTime"]
    cs.running_since = ""
    cs.terminated = podstatus.terminated(75, "peer failed", "2026-01-01T00:00:00Z", "x")
    pod.state.phase, pod.state.ready = "Failed", False
    st = pod.state.status()
    term = st["containerStatuses"][0]["state"]["terminated"]
    assert (term["exitCode"], term["reason"], term["message"]) == (75, "Error", "peer failed")
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "PodCompleted"
    assert podstatus.terminated(0, "", "", "x")["reason"] == "Completed"
    assert ready_since  # kept from the transition, not rewritten on every status
    assert conds["Initialized"]["lastTransitionTime"]


def _slice(ns, svc, name, endpoints):
    return {"metadata": {"namespace": ns, "name": name, "labels": {clusterdns.SERVICE_NAME_LABEL: svc}},
            "addressType": "IPv4", "endpoints": endpoints}


def test_cluster_dns_headless_and_cluster_ip_records():
    services = {("ns", "js"): {"spec": {"clusterIP": "None"}},
                ("ns", "web"): {"spec": {"clusterIP": "10.96.0.10"}}}
    slices = {("ns", "js-abc"): _slice("ns", "js", "js-abc", [
        {"addresses": ["198.18.0.2"], "hostname": "js-w-0-0", "conditions": {"ready": True}},
        {"addresses": ["198.18.0.3"], "hostname": "js-w-0-1", "conditions": {"ready": False}},
        {"addresses": ["198.18.0.4"], "hostname": "js-w-0-2", "conditions": {}}]),
        ("ns", "web-1"): _slice("ns", "web", "web-1", [{"addresses": ["198.18.0.9"]}])}
    recs = clusterdns.records(services, slices, "cluster.local")
    assert recs == {"js.ns.svc.cluster.local": ["198.18.0.2", "198.18.0.4"],
                    "js-w-0-0.js.ns.svc.cluster.local": ["198.18.0.2"],
                    "js-w-0-2.js.ns.svc.cluster.local": ["198.18.0.4"],
                    "web.ns.svc.cluster.local": ["10.96.0.10"]}
    # The pod goes from the slice: its name goes from DNS; the Service goes: all of it.
    slices[("ns", "js-abc")]["endpoints"].pop(0)
    assert "js-w-0-0.js.ns.svc.cluster.local" not in clusterdns.records(services, slices, "cluster.local")
    del services[("ns", "js")]
    assert list(clusterdns.records(services, slices, "cluster.local")) == ["web.ns.svc.cluster.local"]


def test_cluster_dns_feeds_the_project_dns_server():
    import dns.resolver

    from jobset_runtime.local.dns import DnsServer

    with DnsServer("127.0.0.1", 0, zones=("cluster.local",)) as server:
        cd = clusterdns.ClusterDns(api=None, server=server, domain="cluster.local")
        cd.services[("ns", "js")] = {"spec": {"clusterIP": "None"}}
        cd.slices[("ns", "s")] = _slice("ns", "js", "s", [{"addresses": ["198.18.0.7"], "hostname": "h0"}])
        cd._sync()
        r = dns.resolver.Resolver(configure=False)
        r.nameservers, r.port = [server.address[0]], server.address[1]
        assert [a.to_text() for a in r.resolve("h0.js.ns.svc.cluster.local", "A")] == ["198.18.0.7"]
        cd.slices[("ns", "s")]["endpoints"] = []
        cd._sync()
        with pytest.raises(dns.resolver.NXDOMAIN):
            r.resolve("h0.js.ns.svc.cluster.local", "A")


def test_node_labels_cycle_over_groups_and_capacity_adds_resources():
    assert parse_labels(["pool=a", "pool=b"], 4) == [{"pool": "a"}, {"pool": "a"}, {"pool": "b"}, {"pool": "b"}]
    assert parse_labels([], 2) == [{}, {}]
    cap = parse_capacity(["google.com/tpu=4"])
    assert cap["google.com/tpu"] == "4" and cap["pods"] == "110"


def test_placement_of_the_demo_is_two_pools_of_two_tpu_nodes():
    from jobset_runtime.local import spec

    js, _ = spec.split_documents(spec.load_documents((ROOT / "examples" / "demo.yaml").read_text()))
    nodes, labels, capacity = placement(js)
    assert nodes == 4 and capacity == ["google.com/tpu=4"]
    pools = [dict(kv.split("=") for kv in x.split(","))["cloud.google.com/gke-nodepool"] for x in labels]
    assert pools == ["pool-0", "pool-0", "pool-1", "pool-1"]
    assert all("cloud.google.com/gke-tpu-topology=2x2x2" in x for x in labels)


def test_state_dir_of_other_versions_is_refused(tmp_path):
    from jobset_runtime.errors import ConfigError
    from jobset_runtime.local.controlplane import cluster

    lay = components.Layout(tmp_path)
    lay.info.write_text(json.dumps({"versions": "kubernetes-v1.30.0_etcd-v3.5.0_jobset-v0.5.0"}))
    with pytest.raises(ConfigError, match="other versions"):
        cluster.check_state_dir(lay)
    lay.info.unlink()
    (tmp_path / "data.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a cluster directory"):
        cluster.check_state_dir(lay)


def test_cluster_backend_refuses_loopback_mode_saying_why(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "jobset_runtime", "local", "run", "--backend", "cluster", "--mode",
                        "loopback", str(ROOT / "examples" / "demo.yaml")], env=env, capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 2, r.stderr
    assert "loopback" in r.stderr and "EndpointSlices" in r.stderr and "Traceback" not in r.stderr


def _fake_go(tmp_path, script: str) -> dict:
    """PATH with a `go` of our own first: the build's behaviour around Go, without Go's hour."""
    d = tmp_path / "fakebin"
    d.mkdir()
    (d / "go").write_text("#!/bin/sh\n" + script)
    (d / "go").chmod(0o755)
    return {"PATH": f"{d}:/usr/bin:/bin"}


def test_build_skips_a_complete_cache_without_running_go(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    final = build.cached_dir(root)
    final.mkdir(parents=True)
    for name in (*contract.CONTROL_PLANE_BINARIES, contract.JOBSET_CRD_FILE, contract.JOBSET_WEBHOOKS_FILE,
                 build.STAMP):
        (final / name).write_text("x")
    monkeypatch.setenv("PATH", _fake_go(tmp_path, "echo go must not run >&2; exit 99\n")["PATH"])
    assert build.ensure(root) == final


def test_a_failed_build_leaves_neither_a_directory_nor_its_work(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("PATH", _fake_go(tmp_path, "echo 'proxy.golang.org: 403' >&2; exit 1\n")["PATH"])
    with open(tmp_path / "build.log", "w") as log, pytest.raises(build.BuildError, match="failed"):
        build.ensure(root, log=log)
    text = (tmp_path / "build.log").read_text()
    assert "go mod download -json k8s.io/kubernetes@" in text and "proxy.golang.org: 403" in text
    assert sorted(p.name for p in root.iterdir()) == [".lock"]  # no half-built directory, no work tree


def test_build_without_go_names_the_alternative(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(build.BuildError) as e:
        build.ensure(tmp_path / "cache")
    assert "Go is not installed" in str(e.value) and contract.CONTROL_PLANE_ENV in str(e.value)
