"""End to end: real JobSets run by `jobset-runtime local run`, pods in their own namespaces."""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

import localfixtures as lf
import pytest

from jobset_runtime import podinfo
from jobset_runtime.identity import derive

pytestmark = pytest.mark.netns
FAST = ["--crash-backoff", "0.05", "--pod-backoff", "0.05"]


def ok(result):
    return f"rc={result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


SERVER = r"""
import socket, sys
me = socket.gethostname()
assert me == "demo-server-0-0", me
srv = socket.create_server(("", 7000))
for _ in range(2):
    conn, addr = srv.accept()
    peer = conn.recv(100).decode()
    conn.close()
    # Call the client back by its short name: glibc, resolv.conf search path, our DNS.
    back = socket.create_connection((peer + ".demo", 7001), timeout=10)
    back.sendall(b"hello " + peer.encode())
    back.close()
    print("served", peer, "from", addr[0], flush=True)
"""

CLIENT = r"""
import os, socket, time
me = socket.gethostname()
assert me == os.environ["HOSTNAME"], (me, os.environ["HOSTNAME"])
assert open("/etc/hosts").read().splitlines()[-1].split("\t") == [
    os.environ["POD_IP"], me + ".demo.default.svc.cluster.local", me]
listener = socket.create_server(("", 7001))
for _ in range(200):
    try:
        c = socket.create_connection(("demo-server-0-0.demo", 7000), timeout=5)
        break
    except OSError:
        time.sleep(0.05)
server_ip = c.getpeername()[0]
c.sendall(me.encode())
c.close()
conn, _ = listener.accept()
print(conn.recv(100).decode(), "via", server_ip, flush=True)
"""


def test_two_replicated_jobs_talk_by_hostname(tmp_path):
    env_ip = {"env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]}
    js = lf.jobset("demo", [("server", 1, 1, lf.py(SERVER)),
                            ("client", 1, 2, {**lf.py(CLIENT), **env_ip})])
    r = lf.run_local(tmp_path, js, args=["--timeout", "60"])
    assert r.returncode == 0, ok(r)
    for i in (0, 1):
        assert f"hello demo-client-0-{i} via 198.18." in r.stdout, ok(r)
        assert f"served demo-client-0-{i} from 198.18." in r.stdout
    status = r.stdout.split("NAME")[1]
    assert "Completed" in status and "True" in status


RESTART = r"""
attempt=$1; dir=$2
echo "$attempt $POD_IP" >> "$dir/$HOSTNAME"
if [ "$JOB_COMPLETION_INDEX" = 1 ] && [ ! -e "$dir/failed-once" ]; then
  touch "$dir/failed-once"; echo failing once; exit 3
fi
sleep 0.2
"""


def test_restart_once_then_complete(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    container = lf.sh(RESTART, "$(ATTEMPT)", str(shared))
    container["env"] = [
        {"name": "ATTEMPT", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['jobset.sigs.k8s.io/restart-attempt']"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    js = lf.jobset("rs", [("lead", 1, 1, lf.sh("sleep 0.5")),
                          ("workers", 1, 2, container, {"backoffLimit": 0}, {"restartPolicy": "Never"})],
                   failurePolicy={"maxRestarts": 1})
    r = lf.run_local(tmp_path, js, args=["--timeout", "60", *FAST])
    assert r.returncode == 0, ok(r)
    lines = {h: (shared / h).read_text().split("\n")[:-1] for h in ("rs-workers-0-0", "rs-workers-0-1")}
    # Every pod of the new attempt carries restart-attempt 1; the pod that failed ran twice,
    # keeping its hostname but not its IP.
    assert [ln.split()[0] for ln in lines["rs-workers-0-1"]] == ["0", "1"], lines
    assert lines["rs-workers-0-0"][-1].split()[0] == "1", lines
    assert lines["rs-workers-0-1"][0].split()[1] != lines["rs-workers-0-1"][1].split()[1]
    row = r.stdout.split("NAME")[1].splitlines()[1].split()
    assert row[:4] == ["rs", "Completed", "1", "True"], ok(r)
    assert "restart-attempt 1" in r.stdout


def test_max_restarts_reached_fails(tmp_path):
    js = lf.jobset("mr", [("w", 1, 1, lf.sh("exit 5"), {"backoffLimit": 0}, {"restartPolicy": "Never"})],
                   failurePolicy={"maxRestarts": 2})
    r = lf.run_local(tmp_path, js, args=["--timeout", "60", *FAST])
    assert r.returncode == 1, ok(r)
    row = r.stdout.split("NAME")[1].splitlines()[1].split()
    assert row[:4] == ["mr", "Failed", "2", "False"], ok(r)
    assert "ReachedMaxRestarts" in r.stdout


WORKER = r"""
trap 'echo "got SIGTERM"; exit 0' TERM
sleep 60 & wait
"""


def test_success_policy_on_launcher_ends_workers(tmp_path):
    js = lf.jobset("sp", [("launcher", 1, 1, lf.sh("sleep 0.3; echo launcher done")),
                          ("workers", 2, 1, lf.sh(WORKER))],
                   successPolicy={"operator": "Any", "targetReplicatedJobs": ["launcher"]})
    r = lf.run_local(tmp_path, js, args=["--timeout", "60"])
    assert r.returncode == 0, ok(r)
    assert r.stdout.count("got SIGTERM") == 2, ok(r)
    assert "launcher done" in r.stdout


def test_failed_job_without_failure_policy_fails(tmp_path):
    js = lf.jobset("ff", [("w", 1, 2, lf.sh('[ "$JOB_COMPLETION_INDEX" = 0 ] || exit 7'),
                           {"backoffLimit": 1}, {"restartPolicy": "Never"})])
    r = lf.run_local(tmp_path, js, args=["--timeout", "60", *FAST])
    assert r.returncode == 1, ok(r)
    # backoffLimit 1: the failing index is tried twice, then the Job fails.
    assert r.stdout.count("failed (exit codes main=7)") == 2, ok(r)
    assert "BackoffLimitExceeded" in r.stdout


def test_pod_failure_policy_and_failure_policy_rule(tmp_path):
    pfp = {"backoffLimit": 5, "podFailurePolicy": {"rules": [
        {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}}]}}
    js = lf.jobset("pf", [("w", 1, 1, lf.sh("exit 42"), pfp, {"restartPolicy": "Never"})],
                   failurePolicy={"maxRestarts": 3, "rules": [
                       {"name": "noRetry", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}]})
    r = lf.run_local(tmp_path, js, args=["--timeout", "60", *FAST])
    assert r.returncode == 1, ok(r)
    assert "rule noRetry matched" in r.stdout and "PodFailurePolicy" in r.stdout
    assert r.stdout.split("NAME")[1].splitlines()[1].split()[:3] == ["pf", "Failed", "0"]


def test_on_failure_restarts_container_in_place(tmp_path):
    marker = tmp_path / "m"
    js = lf.jobset("of", [("w", 1, 1, lf.sh('[ -e "$1" ] || { touch "$1"; exit 1; }; echo second run on $(hostname)', str(marker)))])
    r = lf.run_local(tmp_path, js, args=["--timeout", "60", *FAST])
    assert r.returncode == 0, ok(r)
    assert "exited with 1 (restart 1)" in r.stdout
    # Same pod (name) both times: the kubelet restarted the container in place.
    assert r.stdout.count("pod of-w-0-0-") >= 2 and len({ln.split()[2] for ln in r.stdout.splitlines() if "pod of-w-0-0-" in ln and "started" in ln}) == 1
    assert "second run on of-w-0-0" in r.stdout


def test_depends_on_complete(tmp_path):
    marker = tmp_path / "init-done"
    js = lf.jobset("dep", [("init", 1, 1, lf.sh('sleep 0.3; touch "$1"', str(marker))),
                           ("main", 1, 2, lf.sh('[ -e "$1" ] && echo init was complete', str(marker)))])
    js["spec"]["replicatedJobs"][1]["dependsOn"] = [{"name": "init", "status": "Complete"}]
    r = lf.run_local(tmp_path, js, args=["--timeout", "60"])
    assert r.returncode == 0, ok(r)
    assert r.stdout.count("init was complete") == 2


PODINFO_ITEMS = [{"path": p, "fieldRef": {"fieldPath": f}} for p, f in
                 (("labels", "metadata.labels"), ("annotations", "metadata.annotations"),
                  ("name", "metadata.name"), ("namespace", "metadata.namespace"))]


def test_pods_see_jobset_metadata_and_the_runtime_reads_it(tmp_path):
    out = tmp_path / "seen"
    out.mkdir()
    dump = 'h=$(hostname); cp /etc/podinfo/labels "$1/$h.labels"; cp /etc/podinfo/annotations "$1/$h.annotations"; ' \
           'cp /etc/podinfo/name "$1/$h.name"; cp /etc/podinfo/namespace "$1/$h.namespace"; cp /etc/hosts "$1/$h.hosts"'
    container = {**lf.sh(dump, str(out)), "volumeMounts": [{"name": "podinfo", "mountPath": "/etc/podinfo"}]}
    pod = {"volumes": [{"name": "podinfo", "downwardAPI": {"items": PODINFO_ITEMS}}]}
    js = lf.jobset("md", [("launcher", 1, 1, container, {}, pod), ("workers", 2, 2, container, {}, pod)],
                   coordinator={"replicatedJob": "launcher"})
    existed = os.path.exists("/etc/podinfo")
    r = lf.run_local(tmp_path, js, args=["--timeout", "60"])
    assert r.returncode == 0, ok(r)
    assert os.path.exists("/etc/podinfo") == existed  # the mountpoint made for the run is gone
    want = {  # hostname: (job-global-index, completion index, replicatedjob-replicas)
        "md-launcher-0-0": ("0", "0", "1"), "md-workers-0-0": ("1", "0", "2"), "md-workers-0-1": ("1", "1", "2"),
        "md-workers-1-0": ("2", "0", "2"), "md-workers-1-1": ("2", "1", "2")}
    for host, (gidx, pidx, reps) in want.items():
        labels = podinfo.parse_downward_file((out / f"{host}.labels").read_text())
        annotations = podinfo.parse_downward_file((out / f"{host}.annotations").read_text())
        for src in (labels, annotations):
            assert src["jobset.sigs.k8s.io/job-global-index"] == gidx
            assert src["batch.kubernetes.io/job-completion-index"] == pidx
            assert src["jobset.sigs.k8s.io/replicatedjob-replicas"] == reps
            assert src["jobset.sigs.k8s.io/global-replicas"] == "3"
            assert src["jobset.sigs.k8s.io/restart-attempt"] == "0"
            assert src["jobset.sigs.k8s.io/coordinator"] == "md-launcher-0-0.md"
        assert (out / f"{host}.name").read_text().startswith(host + "-")
        assert (out / f"{host}.namespace").read_text() == "default"
        # The overlay that made /etc/podinfo inside the pod kept the pod's own /etc/hosts.
        assert (out / f"{host}.hosts").read_text().splitlines()[-1].endswith(f"\t{host}.md.default.svc.cluster.local\t{host}")
        # The runtime's reader gets the same identity back (the podinfo round trip).
        pd = tmp_path / "pi" / host
        pd.mkdir(parents=True)
        for f in ("labels", "annotations", "name", "namespace"):
            (pd / f).write_text((out / f"{host}.{f}").read_text())
        ident = derive(podinfo.read_pod_metadata({"JOBSET_RUNTIME_PODINFO": str(pd)}, str(out / f"{host}.hosts")))
        assert ident.hostname == host
        assert ident.job_global_index == int(gidx) and ident.pod_index == int(pidx)
        assert ident.coordinator_host == "md-launcher-0-0"
        assert ident.namespace == "default" and ident.subdomain == "md"


def _nothing_left(token, output):
    # Only this run's names: other runs may share the machine.
    prefix = re.search(r"namespaces (jsr-[0-9a-f-]+)", output).group(1)
    assert lf.processes_with(token) == []
    assert not any(n == prefix or n.startswith(prefix + "-") for n in lf.netns_names())
    assert not any(n.startswith(prefix + "-") for n in lf.etc_netns())
    assert lf.mounts_mentioning(prefix) == []


STUBBORN = r"""
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
# A daemon that leaves the process group: only a sweep of the pod's namespace finds it.
subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(1000)", sys.argv[1]])
print("up", flush=True)
time.sleep(1000)
"""


def _stubborn_jobset(token):
    c = {"command": [__import__("sys").executable, "-c", STUBBORN, token]}
    return lf.jobset("stuck", [("w", 1, 2, c, {}, {"terminationGracePeriodSeconds": 1})])


def test_timeout_leaves_nothing_behind(tmp_path):
    token = "tok-" + uuid.uuid4().hex
    r = lf.run_local(tmp_path, _stubborn_jobset(token), args=["--timeout", "1.5"])
    assert r.returncode == 124, ok(r)
    assert "TimedOut" in r.stdout
    _nothing_left(token, r.stdout)


def test_ctrl_c_leaves_nothing_behind(tmp_path):
    token = "tok-" + uuid.uuid4().hex
    p = subprocess.Popen(lf.local_argv(tmp_path, _stubborn_jobset(token), args=["--timeout", "60"]),
                         env=lf.cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = lf.wait_stubborn_up(p, token)
    p.send_signal(signal.SIGINT)
    rest, _ = p.communicate(timeout=30)
    assert p.returncode == 130, "".join(seen) + rest
    _nothing_left(token, "".join(seen))


def test_a_runner_killed_outright_leaves_nothing_running(tmp_path):
    """kill -9 of the runner: its watchdog reaps the pods (and a daemon that left their
    process groups) and the namespaces at once, not at the next run."""
    token = "tok-" + uuid.uuid4().hex
    p = subprocess.Popen(lf.local_argv(tmp_path, _stubborn_jobset(token), args=["--timeout", "60"]),
                         env=lf.cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = lf.wait_stubborn_up(p, token)
    p.kill()
    p.wait(timeout=30)
    prefix = re.search(r"namespaces (jsr-[0-9a-f-]+)", "".join(seen)).group(1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (lf.processes_with(token) or any(
            n == prefix or n.startswith(prefix + "-") for n in lf.netns_names() | lf.etc_netns())):
        time.sleep(0.1)
    _nothing_left(token, "".join(seen))


LATE_PEER = r"""
import os, socket, time
misses = 0
while True:
    try:
        ip = socket.gethostbyname("dl-w-0-1.dl")
        break
    except OSError:
        misses += 1
        time.sleep(0.05)
print("resolved after", "misses" if misses else "no misses", flush=True)
open(os.path.join(os.environ["SHARED"], "resolved"), "w").close()
"""


def test_dns_delay_and_skew(tmp_path):
    # Pod 1 starts late (--skew); its record shows up later still (--dns-delay): pod 0
    # sees NXDOMAIN first, as with a slow cluster DNS.
    script = ('if [ "$JOB_COMPLETION_INDEX" = 1 ]; then '
              'while [ ! -e "$SHARED/resolved" ]; do sleep 0.05; done; exit 0; fi; exec "$@"')
    c = lf.sh(script, __import__("sys").executable, "-c", LATE_PEER)
    c["env"] = [{"name": "SHARED", "value": str(tmp_path)}]
    js = lf.jobset("dl", [("w", 1, 2, c)])
    r = lf.run_local(tmp_path, js, args=["--timeout", "60", "--dns-delay", "0.3", "--skew", "dl-w-0-1=0.3"])
    assert r.returncode == 0, ok(r)
    assert "resolved after misses" in r.stdout, ok(r)
    out = r.stdout
    assert out.index("pod dl-w-0-0-") < out.index("pod dl-w-0-1-")


def test_stale_namespaces_of_a_killed_runner_are_reaped():
    from jobset_runtime.local.pods import reap_stale

    dead = subprocess.Popen(["true"])
    dead.wait()
    name = f"jsr-{dead.pid}-abcd-1"
    subprocess.run(["ip", "netns", "add", name], check=True)
    os.makedirs(f"/etc/netns/{name}", exist_ok=True)
    files = tempfile.mkdtemp(prefix=f"jsr-{dead.pid}-abcd-files-")  # non-root containers' termination logs
    try:
        reaped = reap_stale()
        assert name in reaped and os.path.basename(files) in reaped
        assert name not in lf.netns_names() and name not in lf.etc_netns() and not os.path.exists(files)
    finally:
        shutil.rmtree(files, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        if os.path.isdir(f"/etc/netns/{name}"):
            os.rmdir(f"/etc/netns/{name}")


SURVIVOR = r"""
import time, dns.resolver
r = dns.resolver.Resolver(configure=False); r.nameservers = ["198.18.0.1"]
r.resolve("br-keep-0-0.br.default.svc.cluster.local", "A", lifetime=5)  # ARP for the gateway now cached
time.sleep(1.5)  # the short-lived pods are gone by now, their veths out of the bridge
for _ in range(3):
    print("answer", r.resolve("br-keep-0-0.br.default.svc.cluster.local", "A", lifetime=2)[0].address, flush=True)
"""


def test_dns_stays_reachable_when_other_pods_leave_the_bridge(tmp_path):
    # A bridge without a fixed MAC takes its lowest port's and changes it when that port
    # leaves: the surviving pod's ARP entry for the DNS server then points nowhere.
    js = lf.jobset("br", [("keep", 1, 1, lf.py(SURVIVOR)), ("short", 1, 8, lf.sh("sleep 0.7"))])
    r = lf.run_local(tmp_path, js, args=["--timeout", "30"])
    assert r.returncode == 0, ok(r)
    assert r.stdout.count("answer 198.18.0.") == 3


def test_failure_policy_rule_targets_and_ignore_max_restarts(tmp_path):
    # The first rule targets another replicatedJob, so it does not match; the second
    # restarts without counting toward maxRestarts 0.
    marker = tmp_path / "failed-once"
    flaky = lf.sh('[ -e "$1" ] || { touch "$1"; exit 4; }', str(marker))
    js = lf.jobset("ig", [("lead", 1, 1, lf.sh("sleep 0.2")),
                          ("w", 1, 1, flaky, {"backoffLimit": 0}, {"restartPolicy": "Never"})],
                   failurePolicy={"maxRestarts": 0, "rules": [
                       {"name": "leadFails", "action": "FailJobSet", "targetReplicatedJobs": ["lead"]},
                       {"name": "free", "action": "RestartJobSetAndIgnoreMaxRestarts",
                        "onJobFailureReasons": ["BackoffLimitExceeded"], "onJobFailureMessagePatterns": ["backoff limit"]}]})
    r = lf.run_local(tmp_path, js, args=["--timeout", "60", *FAST])
    assert r.returncode == 0, ok(r)
    assert "rule free matched" in r.stdout and "rule leadFails" not in r.stdout
    assert r.stdout.split("NAME")[1].splitlines()[1].split()[:3] == ["ig", "Completed", "1"]


def test_active_deadline_fails_the_job(tmp_path):
    js = lf.jobset("ad", [("w", 1, 1, lf.sh("sleep 30"), {"activeDeadlineSeconds": 1},
                           {"terminationGracePeriodSeconds": 1})])
    r = lf.run_local(tmp_path, js, args=["--timeout", "60"])
    assert r.returncode == 1, ok(r)
    assert "job ad-w-0 failed: DeadlineExceeded" in r.stdout
