"""The real control plane (kube-apiserver, etcd, kube-controller-manager, kube-scheduler,
the JobSet v0.12 manager and its webhooks) with the node agent as its nodes.

Skipped, with the reason, where the binaries are not built (`./dev control-plane`,
or JOBSET_RUNTIME_CONTROL_PLANE) or network namespaces are unavailable.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from localfixtures import ROOT, netns_unavailable

from jobset_runtime import contract
from jobset_runtime.addresses import free_port
from jobset_runtime.local.controlplane import binaries

_ok, _where = binaries.available()
pytestmark = [
    pytest.mark.skipif(not _ok, reason=f"control plane not built: {_where}"),
    pytest.mark.skipif(bool(netns_unavailable()), reason=f"network namespaces unavailable: {netns_unavailable()}"),
]
BIN = Path(sys.executable).parent


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(contract.ENV_PREFIX) or k == contract.CONTROL_PLANE_ENV}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the pods run jobset-run and python from here
    env["PYTHONPATH"] = str(ROOT)
    env["JAX_PLATFORMS"] = "cpu"  # the jax kind's pods, on this machine's CPUs
    return env


def cli(*args, timeout=400, check=None) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "jobset_runtime", "local", *args], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=timeout)
    if check is not None:
        assert r.returncode == check, r.stdout[-4000:] + r.stderr[-4000:]
    return r


class Cluster:
    def __init__(self, state: Path):
        self.state = state
        self.kubeconfig = state / "kubeconfig"

    def kubectl(self, *args, check=True, input=None, timeout=60) -> subprocess.CompletedProcess:
        r = subprocess.run([str(Path(_where) / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args], input=input,
                           capture_output=True, text=True, timeout=timeout)
        if check:
            assert r.returncode == 0, r.stderr
        return r

    def json(self, *args) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def wait_terminal(self, name: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            js = self.json("jobset", name)
            if (js.get("status") or {}).get("terminalState"):
                return js
            time.sleep(0.5)
        log = (self.state / "logs" / "node-agent.log").read_text()[-5000:]
        pytest.fail(f"jobset {name} not terminal within {timeout} s: {json.dumps(js.get('status'))}\n{log}")

    def agent_log(self) -> str:
        return (self.state / "logs" / "node-agent.log").read_text(errors="replace")


def _leftovers(state) -> list[str]:
    """Processes still alive whose command line holds `state` (a cluster's directory, or any text)."""
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(state) in cmd:
                out.append(f"pid {pid}: {cmd[:120]}")
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """4 nodes in 2 node pools, TPU-labelled as the demo's nodeSelector asks."""
    state = tmp_path_factory.mktemp("cluster") / "state"
    r = cli("cluster", "up", "--state-dir", str(state), "--port", str(free_port()), "--nodes", "4",
            "--node-labels", "cloud.google.com/gke-nodepool=pool-a,cloud.google.com/gke-tpu-accelerator=tpu-v5p-slice,"
            "cloud.google.com/gke-tpu-topology=2x2x2",
            "--node-labels", "cloud.google.com/gke-nodepool=pool-b,cloud.google.com/gke-tpu-accelerator=tpu-v5p-slice,"
            "cloud.google.com/gke-tpu-topology=2x2x2",
            "--node-capacity", "google.com/tpu=4", "--node-capacity", "nvidia.com/gpu=8")
    if r.returncode != 0:
        log = state / "logs" / "supervisor.log"
        pytest.fail(f"cluster up failed ({r.returncode}): {r.stderr}\n{log.read_text() if log.exists() else ''}")
    assert r.stdout.strip() == f"export KUBECONFIG={state / 'kubeconfig'}"
    c = Cluster(state)
    yield c
    cli("cluster", "down", "--state-dir", str(state), check=0)
    assert not state.exists()
    assert _leftovers(state) == []


def test_status_env_and_nodes(cluster):
    r = cli("cluster", "status", "--state-dir", str(cluster.state), check=0)
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "jobset-manager", "node-agent"):
        assert f"{name}" in r.stdout and "EXITED" not in r.stdout
    assert cli("cluster", "env", "--state-dir", str(cluster.state), check=0).stdout.strip() == \
        f"export KUBECONFIG={cluster.kubeconfig}"
    nodes = cluster.json("nodes")["items"]
    assert len(nodes) == 4
    pools = sorted(n["metadata"]["labels"]["cloud.google.com/gke-nodepool"] for n in nodes)
    assert pools == ["pool-a", "pool-a", "pool-b", "pool-b"]
    for n in nodes:
        ready = [c for c in n["status"]["conditions"] if c["type"] == "Ready"][0]
        assert ready["status"] == "True"
        assert n["status"]["allocatable"]["google.com/tpu"] == "4"
    leases = cluster.json("leases", "-n", "kube-node-lease")["items"]
    assert sorted(x["spec"]["holderIdentity"] for x in leases) == sorted(n["metadata"]["name"] for n in nodes)
    # etcd answers only holders of a client certificate of the cluster's CA.
    import ssl
    import urllib.error
    import urllib.request

    port = json.loads((cluster.state / "cluster.json").read_text())["ports"]["etcd_client"]
    ctx = ssl.create_default_context(cafile=str(cluster.state / "pki" / "ca.crt"))
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        urllib.request.urlopen(f"https://127.0.0.1:{port}/health", context=ctx, timeout=5).read()
    ctx.load_cert_chain(str(cluster.state / "pki" / "etcd-client.crt"), str(cluster.state / "pki" / "etcd-client.key"))
    assert json.loads(urllib.request.urlopen(f"https://127.0.0.1:{port}/health", context=ctx, timeout=5).read())["health"] == "true"
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == contract.KUBERNETES_VERSION


def test_demo_completes_with_exclusive_placement(cluster):
    """examples/demo.yaml applied with kubectl: 2 slices x 2 hosts, each slice in its own node pool."""
    cluster.kubectl("apply", "-f", str(ROOT / "examples" / "demo.yaml"))
    js = cluster.wait_terminal("demo")
    assert js["status"]["terminalState"] == "Completed", json.dumps(js["status"])
    log = cluster.agent_log()
    assert log.count("sum of ranks 6 (expected 6)") == 4, log[-4000:]
    pods = cluster.json("pods", "-l", f"{contract.JOBSET_NAME_KEY}=demo")["items"]
    assert len(pods) == 4
    nodes = {n["metadata"]["name"]: n["metadata"]["labels"]["cloud.google.com/gke-nodepool"]
             for n in cluster.json("nodes")["items"]}
    pool_of_job = {}
    for p in pods:
        job = p["metadata"]["labels"][contract.JOB_INDEX_KEY]
        pool_of_job.setdefault(job, set()).add(nodes[p["spec"]["nodeName"]])
        st = p["status"]
        assert st["phase"] == "Succeeded" and st["podIP"].startswith("198.18.")
        term = st["containerStatuses"][0]["state"]["terminated"]
        assert term["exitCode"] == 0 and term["reason"] == "Completed"
        assert {c["type"] for c in st["conditions"]} >= {"PodScheduled", "Initialized", "Ready", "ContainersReady"}
        assert st["startTime"]
    assert all(len(v) == 1 for v in pool_of_job.values()), pool_of_job
    assert pool_of_job["0"] != pool_of_job["1"], pool_of_job
    cluster.kubectl("delete", "jobset", "demo", "--wait=true", timeout=120)


def test_exit_2_fails_the_jobset_with_the_termination_message(cluster):
    doc = {"apiVersion": contract.JOBSET_API_VERSION, "kind": "JobSet", "metadata": {"name": "bad"},
           "spec": {"failurePolicy": {"maxRestarts": 3, "rules": [
               {"name": "config", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}]},
               "replicatedJobs": [{"name": "w", "replicas": 1, "template": {"spec": {
                   "parallelism": 1, "completions": 1, "backoffLimit": 0,
                   "podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In",
                                                                                      "values": [2]}}]},
                   "template": {"spec": {"restartPolicy": "Never", "containers": [{
                       "name": "main", "image": "ignored", "terminationMessagePolicy": "FallbackToLogsOnError",
                       "command": ["/bin/sh", "-c", "echo bad config: no such file >&2; exit 2"]}]}}}}}]}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    js = cluster.wait_terminal("bad")
    assert js["status"]["terminalState"] == "Failed"
    assert js["status"].get("restarts", 0) == 0
    pods = cluster.json("pods", "-l", f"{contract.JOBSET_NAME_KEY}=bad")["items"]
    assert len(pods) == 1
    term = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 2 and term["reason"] == "Error"
    assert "bad config: no such file" in term["message"]
    cluster.kubectl("delete", "jobset", "bad", "--wait=true", timeout=120)


def test_secret_env_configmap_volume_and_downward_api_from_the_api(cluster):
    docs = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s1"}, "stringData": {"pw": "hunter2"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1"}, "data": {"greeting": "hello"}},
        {"apiVersion": contract.JOBSET_API_VERSION, "kind": "JobSet", "metadata": {"name": "refs"},
         "spec": {"replicatedJobs": [{"name": "w", "replicas": 1, "template": {"spec": {
             "parallelism": 1, "completions": 1, "backoffLimit": 0,
             "template": {"spec": {"restartPolicy": "Never", "containers": [{
                 "name": "main", "image": "ignored",
                 "command": ["/bin/sh", "-c", 'test "$PW" = hunter2 && test "$(cat /etc/c1/greeting)" = hello && '
                             'grep -q "jobset.sigs.k8s.io/jobset-name=\\"refs\\"" /etc/pi/labels && '
                             'echo "refs ok on $NODE as $POD_NAME"'],
                 "env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s1", "key": "pw"}}},
                         {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                         {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                 "volumeMounts": [{"name": "c1", "mountPath": "/etc/c1"}, {"name": "pi", "mountPath": "/etc/pi"}]}],
                 "volumes": [{"name": "c1", "configMap": {"name": "c1"}},
                             {"name": "pi", "downwardAPI": {"items": [
                                 {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}]}}}}}]}},
    ]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    js = cluster.wait_terminal("refs")
    assert js["status"]["terminalState"] == "Completed", cluster.agent_log()[-3000:]
    pod = cluster.json("pods", "-l", f"{contract.JOBSET_NAME_KEY}=refs")["items"][0]
    assert f"refs ok on {pod['spec']['nodeName']} as {pod['metadata']['name']}" in cluster.agent_log()
    cluster.kubectl("delete", "jobset", "refs", "--wait=true", timeout=120)


def test_deleting_a_running_pod_sends_sigterm_then_the_object_goes(cluster):
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper"},
           "spec": {"terminationGracePeriodSeconds": 20, "containers": [{
               "name": "main", "image": "ignored",
               "command": ["/bin/sh", "-c", "trap 'echo got TERM; exit 0' TERM; echo sleeping; "
                           "while :; do sleep 0.1; done"]}]}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = cluster.json("pod", "sleeper").get("status") or {}
        if st.get("phase") == "Running" and "[sleeper] sleeping" in cluster.agent_log():
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"pod never ran: {st}")
    cluster.kubectl("delete", "pod", "sleeper", "--wait=true", timeout=60)
    assert "[sleeper] got TERM" in cluster.agent_log()  # its trap ran: SIGTERM came first
    assert cluster.kubectl("get", "pod", "sleeper", check=False).returncode != 0


def test_a_busy_port_and_a_running_state_dir_are_clear_errors(cluster, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = cli("cluster", "up", "--state-dir", str(tmp_path / "st"), "--port", str(port), check=2)
        assert f"port {port}" in r.stderr and "--port" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "st").exists()
    r = cli("cluster", "up", "--state-dir", str(cluster.state), "--port", str(free_port()), check=0)
    assert "already running" in r.stderr


def test_a_state_dir_of_another_version_is_refused(tmp_path):
    st = tmp_path / "st"
    st.mkdir()
    (st / "cluster.json").write_text(json.dumps({"versions": "kubernetes-v1.30.0_etcd-v3.5.0_jobset-v0.5.0"}))
    for args in (("up", "--port", str(free_port())), ("down",)):
        r = cli("cluster", *args, "--state-dir", str(st), check=2)
        assert "other versions" in r.stderr and "Traceback" not in r.stderr
    assert (st / "cluster.json").exists()  # not ours to remove


def test_sigkilled_supervisor_leaves_nothing_after_down(tmp_path):
    import signal

    st = tmp_path / "st"
    cli("cluster", "up", "--state-dir", str(st), "--port", str(free_port()), "--nodes", "1", check=0)
    info = json.loads((st / "cluster.json").read_text())
    os.kill(info["supervisor"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _leftovers(st) and time.monotonic() < deadline:  # PR_SET_PDEATHSIG takes the components
        time.sleep(0.2)
    assert _leftovers(st) == []
    cli("cluster", "down", "--state-dir", str(st), check=0)
    assert not st.exists()
    agent = info["processes"]["node-agent"]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"jsr-{agent}-" not in netns


def test_run_backend_cluster_prints_the_table_and_exit_codes(tmp_path):
    r = cli("run", "--backend", "cluster", str(ROOT / "examples" / "demo.yaml"), "--run-dir", str(tmp_path / "run"),
            "--timeout", "240", timeout=500)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
    assert r.stdout.count("sum of ranks 6 (expected 6)") == 4, r.stdout[-4000:]
    table = r.stdout[r.stdout.index("NAME   TERMINALSTATE"):]
    assert table.splitlines()[1].split()[:5] == ["demo", "Completed", "0", "True", "false"]
    assert "slice" in table.splitlines()[3]
    assert _leftovers(tmp_path / "run") == []
    # As the embedded backend: each pod's log in the run directory; the components' beside them.
    assert sum("sum of ranks 6" in p.read_text() for p in (tmp_path / "run").glob("demo-slice-*.log")) == 4
    assert (tmp_path / "run" / "control-plane-logs" / "kube-apiserver.log").stat().st_size > 0
    assert not list((tmp_path / "run").glob("cluster-*"))


def _validate_corpus():
    """The manifest tests' corpus: every generated example (valid) and each broken case of
    tests/manifests/test_validate.py applied to its valid base."""
    sys.path.insert(0, str(ROOT / "tests" / "manifests"))
    import test_validate as tv

    from jobset_runtime.local import spec

    corpus = {}
    for kind in ("tpu-multislice", "mpi", "jax", "torch"):
        js, _ = spec.split_documents(spec.load_documents((ROOT / "examples" / f"{kind}.yaml").read_text()))
        corpus[f"example {kind}"] = js
    corpus["valid base"] = tv.base()
    for case, mutate in [*((c, m) for c, (m, _, _) in tv.BROKEN.items()), *tv.ACCEPTED.items()]:
        doc = tv.base()
        mutate(doc)
        corpus[case] = doc
    return corpus


# What JobSet admission (defaulting, CRD schema, CEL, webhooks) accepts and the Job API
# refuses once the controller creates the Job: `manifest validate` gives the API server's
# verdict (accepted) and says so in its "jobs" verdict.  Measured against v1.36.3 + v0.12.0.
LATER_JOB_CREATION_FAILS = {
    # accepted, then the JobSet controller's Job is refused by the Job API (event JobCreationFailed)
    "podFailurePolicy without restartPolicy Never": "spec.template.spec.restartPolicy",
    "missing container name": "spec.template.spec.containers[0].name",
}
# Accepted by Kubernetes; refused only by jobset-runtime's own "runtime" verdict.
RUNTIME_ONLY = {"completions differ from parallelism", "NonIndexed Jobs"}


def test_manifest_validate_agrees_with_the_api_server_and_webhook(cluster):
    from jobset_runtime.local.controlplane import binaries as b
    from jobset_runtime.manifests import validate

    crd = validate.load_crd(str(Path(b.locate()) / contract.JOBSET_CRD_FILE))
    ours, real, verdicts = {}, {}, {}
    for case, doc in _validate_corpus().items():
        verdicts[case] = validate.verdict([doc], crd)
        ours[case] = not verdicts[case].api
        r = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc), check=False)
        real[case] = r.returncode == 0
        assert r.returncode == 0 or "Traceback" not in r.stderr
    detail = "\n".join(f"{c}: ours {'accepts' if ours[c] else 'rejects'}, API server "
                       f"{'accepts' if real[c] else 'rejects'}" for c in sorted(ours) if ours[c] != real[c])
    assert ours == real, detail
    assert sum(1 for c in ours if not real[c]) >= 20 and ours["valid base"]
    assert all(ours[c] for c in ours if c.startswith("example"))
    # What is accepted but cannot run is named in the other two verdicts.
    assert {c for c in ours if verdicts[c].jobs} == set(LATER_JOB_CREATION_FAILS)
    assert {c for c in ours if real[c] and verdicts[c].runtime} == RUNTIME_ONLY


def test_the_corpus_gets_the_real_api_servers_verdict(cluster):
    """tests/manifests/corpus: one JobSet per upstream rule, with the verdict expected.yaml
    records, replayed with `kubectl create --dry-run=server` on the real API server."""
    corpus = ROOT / "tests" / "manifests" / "corpus"
    wrong = []
    for entry in yaml.safe_load((corpus / "expected.yaml").read_text()):
        if entry.get("feature_gates"):
            continue  # the manager runs with its default gates
        r = cluster.kubectl("create", "--dry-run=server", "-f", str(corpus / entry["file"]), check=False)
        if ("accepted" if r.returncode == 0 else "rejected") != entry["api"]:
            wrong.append(f"{entry['file']}: expected {entry['api']}: {r.stderr.strip()[:300]}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("case", sorted(LATER_JOB_CREATION_FAILS))
def test_what_admission_accepts_the_job_api_refuses_later(cluster, case):
    doc = _validate_corpus()[case]
    doc["metadata"]["name"] = "later-" + str(sorted(LATER_JOB_CREATION_FAILS).index(case))
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ev = cluster.json("events", "--field-selector", f"involvedObject.name={doc['metadata']['name']}")["items"]
        failed = [e for e in ev if e["reason"] == "JobCreationFailed"]
        if failed:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"no JobCreationFailed event for {case}")
    assert LATER_JOB_CREATION_FAILS[case] in failed[0]["message"], failed[0]["message"]
    assert cluster.json("jobs", "-l", f"{contract.JOBSET_NAME_KEY}={doc['metadata']['name']}")["items"] == []
    cluster.kubectl("delete", "jobset", doc["metadata"]["name"], "--wait=true", timeout=120)


def _rj(name, pods, script, job=None, pod=None, **extra):
    c = {"name": "main", "image": "ignored", "command": ["/bin/sh", "-c", f'echo "attempt=$RA"; {script}'],
         "env": [{"name": "RA", "valueFrom": {"fieldRef": {
             "fieldPath": f"metadata.annotations['{contract.RESTART_ATTEMPT_KEY}']"}}}]}
    return {"name": name, "replicas": 1, **extra, "template": {"spec": {
        "parallelism": pods, "completions": pods, "backoffLimit": 0, **(job or {}),
        "template": {"spec": {"restartPolicy": "Never", "containers": [c], **(pod or {})}}}}}


_FAIL_ON_2 = {"podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [2]}}]}}
SCENARIOS = {  # "_every_pod_runs_last": in the final attempt every pod runs (a test key, not sent)
    "success": {"_every_pod_runs_last": True, "replicatedJobs": [_rj("a", 2, "exit 0"), _rj("b", 1, "exit 0")]},
    "exit 2 fails without restart": {
        "failurePolicy": {"maxRestarts": 3, "rules": [{"name": "config", "action": "FailJobSet",
                                                       "onJobFailureReasons": ["PodFailurePolicy"]}]},
        "replicatedJobs": [_rj("a", 2, "exit 2", job=_FAIL_ON_2)]},
    "maxRestarts with the restart attempt rising": {
        "_every_pod_runs_last": True, "failurePolicy": {"maxRestarts": 3},
        "replicatedJobs": [_rj("a", 2, '[ "$RA" -ge 2 ] || exit 1')]},
    "restarts exhausted": {
        "failurePolicy": {"maxRestarts": 1},
        "replicatedJobs": [_rj("a", 1, "exit 1")]},
    "dependsOn Complete": {
        "_every_pod_runs_last": True, "replicatedJobs": [_rj("a", 1, "exit 0"),
                           _rj("b", 1, "exit 0", dependsOn=[{"name": "a", "status": "Complete"}])]},
    "dependsOn Ready": {
        "_every_pod_runs_last": True, "replicatedJobs": [_rj("a", 2, "sleep 2"),
                                                       _rj("b", 1, "exit 0", dependsOn=[{"name": "a", "status": "Ready"}])]},
    "startupPolicy InOrder": {
        "_every_pod_runs_last": True, "startupPolicy": {"startupPolicyOrder": "InOrder"},
        "replicatedJobs": [_rj("a", 1, "sleep 1"), _rj("b", 2, "exit 0")]},
    "successPolicy on one replicatedJob": {
        "successPolicy": {"operator": "All", "targetReplicatedJobs": ["leader"]},
        "replicatedJobs": [_rj("leader", 1, "exit 0"), _rj("worker", 2, "sleep 300")]},
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_same_result_on_both_backends(cluster, scenario, tmp_path):
    name = "diff-" + str(sorted(SCENARIOS).index(scenario))
    doc = {"apiVersion": contract.JOBSET_API_VERSION, "kind": "JobSet", "metadata": {"name": name},
           "spec": {k: v for k, v in SCENARIOS[scenario].items() if not k.startswith("_")}}
    f = tmp_path / "js.yaml"
    f.write_text(yaml.safe_dump(doc))
    emb = cli("run", str(f), "--run-dir", str(tmp_path / "e"), "--timeout", "200", "--pod-backoff", "0.5")
    real = cli("run", "--backend", "cluster", "--kubeconfig", str(cluster.kubeconfig), str(f),
               "--run-dir", str(tmp_path / "c"), "--timeout", "200")

    def row(r):
        lines = r.stdout.splitlines()
        i = next(i for i, x in enumerate(lines) if x.startswith("NAME "))
        return lines[i + 1].split()[1:3]  # TERMINALSTATE, RESTARTS

    assert emb.returncode in (0, 1), emb.stdout[-3000:] + emb.stderr[-2000:]
    assert real.returncode == emb.returncode, (real.stdout[-3000:] + real.stderr[-2000:] + cluster.agent_log()[-3000:])
    assert row(real) == row(emb), (row(real), row(emb))
    cluster.kubectl("delete", "jobset", name, "--wait=true", timeout=120)

    def last_attempts(logs):
        """{hostname: the restart-attempt its newest pod saw}: JobSet's annotation, rising on every pod."""
        return {h: max(int(a) for t in texts for a in re.findall(r"^attempt=(\d+)$", t, flags=re.MULTILINE))
                for h, texts in logs.items() if any("attempt=" in t for t in texts)}

    e = last_attempts(_logs_by_hostname(tmp_path / "e", name))
    r = last_attempts(_logs_by_hostname(cluster.state / "pods", name))
    restarts = int(row(real)[1])
    assert set(e.values()) == set(r.values()) == {restarts}, (e, r)
    if SCENARIOS[scenario].get("_every_pod_runs_last"):
        # Every pod ran in the last attempt (elsewhere a pod may be stopped before it starts).
        assert e == r, (e, r)


def _apply_generated(cluster, docs, name, timeout=240) -> dict:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs, sort_keys=False))
    js = cluster.wait_terminal(name, timeout=timeout)
    logs = {p.name: p.read_text(errors="replace") for p in (cluster.state / "pods").glob(f"{name}-*.log")}
    assert js["status"]["terminalState"] == "Completed", json.dumps(js["status"]) + cluster.agent_log()[-4000:]
    return logs


def test_generated_mpi_runs_allreduce_with_open_mpi_5(cluster):
    from jobset_runtime import manifests

    prog = ROOT / "tests" / "mpi" / "allreduce_prog.py"
    if not (BIN / "mpirun").exists():
        pytest.skip("Open MPI 5 is not installed in this environment (the `mpi` extra; ./dev test installs it)")
    docs = manifests.mpi(name="mpik", image="unused", command=["python", str(prog)], workers=2, slots_per_worker=2)
    logs = _apply_generated(cluster, docs, "mpik")
    line = next(x for t in logs.values() for x in t.splitlines() if "RESULT " in x)
    result = json.loads(line.split("RESULT ", 1)[1])
    assert result["size"] == 4 and result["sum"] == 10
    assert result["library"].startswith("Open MPI v5")
    cluster.kubectl("delete", "jobset", "mpik", "--wait=true", timeout=120)


def test_generated_jax_runs_psum_on_every_process(cluster):
    pytest.importorskip("jax", reason="jax is a test dependency (pip install jax)")
    from jobset_runtime.manifests import jax as jax_manifest

    docs = jax_manifest(name="jaxk", image="ignored", replicas=2, hosts=2,
                        command=[sys.executable, str(ROOT / "examples" / "jax_cpu_demo.py"), "--devices", "2",
                                 "--initialization-timeout", "90", "--timeout", "80"])
    logs = _apply_generated(cluster, docs, "jaxk")
    reports = [json.JSONDecoder().raw_decode(x[x.find('{"process_id"'):])[0]
               for t in logs.values() for x in t.splitlines() if '{"process_id"' in x]
    assert sorted(r["process_id"] for r in reports) == [0, 1, 2, 3]
    assert all(r["ok"] and r["psum"] == r["expected_psum"] for r in reports)
    cluster.kubectl("delete", "jobset", "jaxk", "--wait=true", timeout=120)


def test_generated_torch_gives_each_node_its_rank(cluster):
    from jobset_runtime import manifests

    code = ("import os; print('TORCH', os.environ['NODE_RANK'], os.environ['WORLD_SIZE'], "
            "os.environ['MASTER_ADDR'], os.environ['MASTER_PORT'], os.environ['PET_NNODES'])")
    docs = manifests.torch(name="torchk", image="ignored", nodes=2, nproc_per_node=2, gpus_per_node=2,
                           command=["python", "-c", code])
    logs = _apply_generated(cluster, docs, "torchk")
    lines = sorted(x.split("TORCH ", 1)[1].split() for t in logs.values() for x in t.splitlines() if "TORCH " in x)
    assert [x[0] for x in lines] == ["0", "1"]
    assert all(x[2].startswith("torchk-") and x[4] == "2" for x in lines), lines
    cluster.kubectl("delete", "jobset", "torchk", "--wait=true", timeout=120)


def _logs_by_hostname(d: Path, name: str) -> dict:
    """{hostname: [log text of each of its pods, oldest first]}: a pod's name is its hostname
    and a 5-character suffix; both backends write DIR/<pod>.log."""
    out = {}
    for p in sorted(d.glob(f"{name}-*.log"), key=lambda p: p.stat().st_mtime):
        out.setdefault(p.stem.rsplit("-", 1)[0], []).append(p.read_text(errors="replace"))
    return out


def _both_backends(cluster, tmp_path, docs, name):
    from jobset_runtime.manifests.cli import dump_yaml

    f = tmp_path / f"{name}.yaml"
    f.write_text(dump_yaml(docs))
    emb = cli("run", str(f), "--run-dir", str(tmp_path / "e"), "--timeout", "200")
    real = cli("run", "--backend", "cluster", "--kubeconfig", str(cluster.kubeconfig), str(f),
               "--run-dir", str(tmp_path / "c"), "--timeout", "200")
    cluster.kubectl("delete", "jobset", name, "--wait=true", timeout=120)
    return (emb, _logs_by_hostname(tmp_path / "e", name)), (real, _logs_by_hostname(cluster.state / "pods", name))


def _row(r) -> list:
    lines = r.stdout.splitlines()
    i = next(i for i, x in enumerate(lines) if x.startswith("NAME "))
    return lines[i + 1].split()[1:3]


GROUP_TOKEN = "a-test-token-of-at-least-16-bytes"


def test_in_place_restart_the_same_on_both_backends(cluster, tmp_path):
    """Rank 1 fails its first two epochs; the group restarts in place: the JobSet completes with
    no JobSet restart and no pod recreated, on both backends."""
    from jobset_runtime import manifests

    program = ("import os\n"
               "print('epoch', os.environ['JOBSET_RUNTIME_RESTART'], 'rank', os.environ['JOBSET_RUNTIME_RANK'])\n"
               "if os.environ['JOBSET_RUNTIME_RANK'] == '1' and int(os.environ['JOBSET_RUNTIME_RESTART']) < 2:\n"
               "    raise SystemExit(3)\n")
    docs = manifests.jax(name="ipk", image="ignored", hosts=2, replicas=2, max_restarts=0, group_token=GROUP_TOKEN,
                         in_place_restarts=2, command=[sys.executable, "-c", program])
    (emb, elogs), (real, rlogs) = _both_backends(cluster, tmp_path, docs, "ipk")
    assert emb.returncode == real.returncode == 0, real.stdout[-3000:]
    assert _row(emb) == _row(real) == ["Completed", "0"]
    for logs in (elogs, rlogs):
        assert sorted(logs) == ["ipk-worker-0-0", "ipk-worker-0-1", "ipk-worker-1-0", "ipk-worker-1-1"]
        assert all(len(texts) == 1 for texts in logs.values()), {h: len(t) for h, t in logs.items()}
        epochs = re.findall(r"^epoch (\d) rank 1$", logs["ipk-worker-0-1"][0], flags=re.MULTILINE)
        assert epochs == ["0", "1", "2"], logs["ipk-worker-0-1"][0][-2000:]


def test_every_pods_identity_is_the_same_on_both_backends(cluster, tmp_path):
    """`jobset-runtime env --format json` in every pod of a generated 2 x 2 jax JobSet."""
    from jobset_runtime import manifests

    docs = manifests.jax(name="envk", image="ignored", hosts=2, replicas=2, group_token=GROUP_TOKEN,
                         command=["jobset-runtime", "env", "--format", "json"])
    (emb, elogs), (real, rlogs) = _both_backends(cluster, tmp_path, docs, "envk")
    assert emb.returncode == real.returncode == 0, real.stdout[-3000:] + real.stderr[-2000:]
    assert _row(emb) == _row(real) == ["Completed", "0"]

    def identities(logs):
        out = {}
        for host, texts in logs.items():
            text = texts[-1]
            ident = json.JSONDecoder().raw_decode(text[text.index("{"):])[0]
            ident = json.loads(json.dumps(ident).replace(ident.get("pod_ip") or "\0", "IP"))
            # Made fresh by each backend: the JobSet's UID and each pod name's random suffix.
            assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", ident.pop("jobset_uid"))
            assert re.fullmatch(re.escape(host) + r"-[a-z0-9]{5}", ident.pop("pod_name"))
            out[host] = ident
        return out

    e, r = identities(elogs), identities(rlogs)
    assert sorted(e) == ["envk-worker-0-0", "envk-worker-0-1", "envk-worker-1-0", "envk-worker-1-1"]
    for host in e:
        diff = {k: (e[host].get(k), r[host].get(k)) for k in set(e[host]) | set(r[host]) if e[host].get(k) != r[host].get(k)}
        assert not diff, (host, diff)


def test_a_killed_rank_fails_fast_the_same_on_both_backends(cluster, tmp_path):
    """The generated fail-fast group: rank 2 SIGKILLed; every other wrapper exits 75 (podFailurePolicy
    Ignore), the root cause's exit fails its Job, the JobSet fails without restart."""
    from jobset_runtime import manifests

    program = ("import os, signal, time\n"
               "if os.environ['JOBSET_RUNTIME_RANK'] == '2':\n"
               "    time.sleep(1); os.kill(os.getpid(), signal.SIGKILL)\n"
               "time.sleep(120)\n")
    docs = manifests.jax(name="ffk", image="ignored", hosts=2, replicas=2, max_restarts=0, group_token=GROUP_TOKEN,
                         command=[sys.executable, "-c", program])
    (emb, elogs), (real, rlogs) = _both_backends(cluster, tmp_path, docs, "ffk")
    assert emb.returncode == real.returncode == 1, real.stdout[-3000:]
    assert _row(emb) == _row(real) == ["Failed", "0"]

    def wrapper_codes(logs):
        return {h: [int(c) for t in texts for c in re.findall(r"jobset-run\[.*; exit code (\d+)$", t, flags=re.MULTILINE)]
                for h, texts in logs.items()}

    e, r = wrapper_codes(elogs), wrapper_codes(rlogs)
    assert e == r == {"ffk-worker-0-0": [75], "ffk-worker-0-1": [75], "ffk-worker-1-0": [137],
                      "ffk-worker-1-1": [75]}, (e, r)


def test_readiness_probe_drives_ready_and_dns_without_publish_not_ready(cluster):
    """publishNotReadyAddresses false: a pod is in DNS only once its readinessProbe passes,
    through its Ready condition, the endpointslice controller and cluster DNS."""
    doc = {"apiVersion": contract.JOBSET_API_VERSION, "kind": "JobSet", "metadata": {"name": "rdy"},
           "spec": {"network": {"publishNotReadyAddresses": False}, "replicatedJobs": [
               {"name": "srv", "replicas": 1, "template": {"spec": {"parallelism": 1, "completions": 1, "template": {
                   "spec": {"restartPolicy": "Never", "containers": [{
                       "name": "main", "image": "ignored", "command": ["/bin/sh", "-c", "sleep 8"],
                       "readinessProbe": {"exec": {"command": ["true"]}, "initialDelaySeconds": 3,
                                          "periodSeconds": 1}}]}}}}},
               {"name": "cli", "replicas": 1, "template": {"spec": {"parallelism": 1, "completions": 1, "template": {
                   "spec": {"restartPolicy": "Never", "containers": [{
                       "name": "main", "image": "ignored", "command": ["/bin/sh", "-c",
                       "for i in $(seq 100); do getent hosts rdy-srv-0-0.rdy && exit 0; sleep 0.2; done; exit 1"]}]}}}}}]}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pods = cluster.json("pods", "-l", f"{contract.REPLICATED_JOB_NAME_KEY}=srv")["items"]
        conds = {c["type"]: c["status"] for c in (pods[0].get("status") or {}).get("conditions") or []} if pods else {}
        if conds.get("Ready") and (not seen or seen[-1] != conds["Ready"]):
            seen.append(conds["Ready"])
        if seen[-2:] == ["False", "True"]:
            break
        time.sleep(0.2)
    assert seen[-2:] == ["False", "True"], seen
    js = cluster.wait_terminal("rdy")
    assert js["status"]["terminalState"] == "Completed", cluster.agent_log()[-3000:]
    cli_log = next((cluster.state / "pods").glob("rdy-cli-0-0-*.log")).read_text()
    assert "rdy-srv-0-0.rdy.default.svc.cluster.local" in cli_log
    cluster.kubectl("delete", "jobset", "rdy", "--wait=true", timeout=120)


def test_a_late_dns_record_the_same_on_both_backends(tmp_path):
    """--dns-delay 3 on both backends (cluster: a cluster of the run's own, its DNS made late):
    every generated pod waits for the coordinator's name, and the JobSet completes, no restart."""
    from jobset_runtime import manifests
    from jobset_runtime.manifests.cli import dump_yaml

    docs = manifests.jax(name="late", image="ignored", hosts=2, replicas=2, group_token=GROUP_TOKEN,
                         command=["python", "-c", "import os; print('up as rank', os.environ['JOBSET_RUNTIME_RANK'])"])
    f = tmp_path / "late.yaml"
    f.write_text(dump_yaml(docs))
    emb = cli("run", str(f), "--run-dir", str(tmp_path / "e"), "--timeout", "200", "--dns-delay", "3")
    real = cli("run", "--backend", "cluster", str(f), "--run-dir", str(tmp_path / "c"), "--timeout", "200",
               "--dns-delay", "3", timeout=500)
    assert emb.returncode == real.returncode == 0, real.stdout[-3000:] + real.stderr[-2000:]
    assert _row(emb) == _row(real) == ["Completed", "0"]
    for r in (emb, real):
        assert sorted(re.findall(r"up as rank (\d)", r.stdout)) == ["0", "1", "2", "3"], r.stdout[-3000:]
    assert _leftovers(tmp_path / "c") == []


def test_dns_delay_on_a_running_cluster_is_refused(cluster, tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text(yaml.safe_dump({"apiVersion": contract.JOBSET_API_VERSION, "kind": "JobSet", "metadata": {"name": "x"},
                                 "spec": {"replicatedJobs": SCENARIOS["success"]["replicatedJobs"]}}))
    r = cli("run", "--backend", "cluster", "--kubeconfig", str(cluster.kubeconfig), str(f), "--dns-delay", "2",
            check=2)
    assert "--dns-delay" in r.stderr and "--backend embedded" in r.stderr
    assert cluster.kubectl("get", "jobset", "x", check=False).returncode != 0  # nothing applied


def test_run_backend_cluster_interrupted_exits_130_and_leaves_nothing(tmp_path):
    import signal

    doc = {"apiVersion": contract.JOBSET_API_VERSION, "kind": "JobSet", "metadata": {"name": "long"},
           "spec": {"replicatedJobs": [_rj("a", 2, "echo started; sleep 300")]}}
    f = tmp_path / "long.yaml"
    f.write_text(yaml.safe_dump(doc))
    p = subprocess.Popen([sys.executable, "-m", "jobset_runtime", "local", "run", "--backend", "cluster", str(f),
                          "--run-dir", str(tmp_path / "run")], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    out = []
    for line in p.stdout:
        out.append(line)
        if "] started" in line:
            break
    p.send_signal(signal.SIGTERM)
    out += p.stdout.readlines()
    assert p.wait(timeout=120) == 130, "".join(out)[-3000:]
    table = "".join(out)["".join(out).index("NAME "):]
    assert table.splitlines()[1].split()[:2] == ["long", "Interrupted"]
    assert _leftovers(tmp_path / "run") == []
    assert not list((tmp_path / "run").glob("cluster-*"))  # the state directory went with the cluster


def test_prebuilt_binaries_from_the_env_var_run_a_cluster(tmp_path, monkeypatch):
    """JOBSET_RUNTIME_CONTROL_PLANE=DIR: a directory of someone else's binaries (here links to ours)."""
    d = tmp_path / "assets"
    d.mkdir()
    for f in Path(_where).iterdir():
        (d / f.name).symlink_to(f)
    monkeypatch.setenv(contract.CONTROL_PLANE_ENV, str(d))
    st = tmp_path / "st"
    cli("cluster", "up", "--state-dir", str(st), "--port", str(free_port()), check=0)
    try:
        assert json.loads((st / "cluster.json").read_text())["binaries"] == str(d)
    finally:
        cli("cluster", "down", "--state-dir", str(st), check=0)
    assert _leftovers(st) == []


def test_a_pod_ignoring_sigterm_is_killed_after_its_grace_period(cluster):
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "stubborn"},
           "spec": {"terminationGracePeriodSeconds": 2, "containers": [{
               "name": "main", "image": "ignored",
               "command": ["/bin/sh", "-c", "trap 'echo ignoring TERM' TERM; echo up; "
                           "while :; do sleep 0.1; done"]}]}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    deadline = time.monotonic() + 60
    while "[stubborn] up" not in cluster.agent_log() and time.monotonic() < deadline:
        time.sleep(0.3)
    cluster.kubectl("delete", "pod", "stubborn", "--wait=true", timeout=60)
    log = cluster.agent_log()
    assert "[stubborn] ignoring TERM" in log  # SIGTERM first, which it ignored ...
    assert cluster.kubectl("get", "pod", "stubborn", check=False).returncode != 0  # ... then SIGKILL, and gone
    assert _leftovers("trap 'echo ignoring TERM' TERM") == []  # its process is gone


def test_kubectl_logs_through_the_api_server(cluster):
    """The API server proxies `kubectl logs` to the node agent's kubelet endpoint over TLS
    with its client certificate; without a certificate of the cluster CA nothing is served."""
    import ssl
    import urllib.request

    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "talker"},
           "spec": {"restartPolicy": "Never", "containers": [{
               "name": "main", "image": "ignored",
               "command": ["/bin/sh", "-c", "for i in 1 2 3 4; do echo line $i; sleep 0.3; done"]}]}}
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    deadline = time.monotonic() + 60
    while cluster.json("pod", "talker")["status"].get("phase") not in ("Running", "Succeeded"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    followed = cluster.kubectl("logs", "-f", "talker", timeout=60).stdout  # ends with the container
    assert followed == "".join(f"line {i}\n" for i in range(1, 5))
    assert cluster.kubectl("logs", "talker", "--tail=2").stdout == "line 3\nline 4\n"
    r = cluster.kubectl("logs", "talker", "-c", "nope", check=False)
    assert r.returncode != 0 and "nope" in r.stderr
    node = cluster.json("pod", "talker")["spec"]["nodeName"]
    port = cluster.json("node", node)["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
    ctx = ssl.create_default_context(cafile=str(cluster.state / "pki" / "ca.crt"))
    with pytest.raises((OSError, ssl.SSLError)):
        urllib.request.urlopen(f"https://127.0.0.1:{port}/containerLogs/default/talker/main", context=ctx,
                               timeout=5).read()
    cluster.kubectl("delete", "pod", "talker", "--wait=true", timeout=60)
