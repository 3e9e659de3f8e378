"""Pod-level rules: init containers, sidecars, probes and what Ready means for DNS and dependsOn."""

import sys

import pytest

import localfixtures as lf

pytestmark = pytest.mark.netns


def ok(r):
    return f"rc={r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"


SIDECAR = 'trap "echo sidecar stopped; exit 0" TERM; echo sidecar up; touch "$1/sidecar-$(hostname)"; sleep 60 & wait'


def test_init_containers_run_first_and_sidecars_stop_after_main(tmp_path):
    main = ('[ -e "$1/init-$(hostname)" ] && echo main sees init; '
            'while [ ! -e "$1/sidecar-$(hostname)" ]; do sleep 0.02; done')
    js = lf.jobset("ic", [("w", 1, 2, lf.sh(main, str(tmp_path)))])
    pod = js["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    pod["initContainers"] = [
        {"name": "prepare", "image": "x", **lf.sh('sleep 0.2; touch "$1/init-$(hostname)"', str(tmp_path))},
        {"name": "helper", "image": "x", "restartPolicy": "Always", **lf.sh(SIDECAR, str(tmp_path))},
    ]
    r = lf.run_local(tmp_path, js, args=["--timeout", "60"])
    assert r.returncode == 0, ok(r)
    assert r.stdout.count("main sees init") == 2
    assert r.stdout.count("sidecar up") == 2 and r.stdout.count("sidecar stopped") == 2, ok(r)


def test_failing_init_container_fails_the_pod(tmp_path):
    js = lf.jobset("if", [("w", 1, 1, lf.sh("echo main ran"), {"backoffLimit": 0}, {"restartPolicy": "Never"})])
    pod = js["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    pod["initContainers"] = [{"name": "prepare", "image": "x", **lf.sh("exit 9")}]
    r = lf.run_local(tmp_path, js, args=["--timeout", "60"])
    assert r.returncode == 1, ok(r)
    assert "main ran" not in r.stdout and "prepare=9" in r.stdout


SERVER = r"""
import socket, sys, time
time.sleep(0.5)  # not listening at first: the readiness probe fails until then
srv = socket.create_server(("", 7100))
conn, _ = srv.accept()   # the probe's connections come first; wait for a real message
while True:
    data = conn.recv(10)
    if data == b"go":
        print("got go", flush=True)
        break
    conn, _ = srv.accept()
"""

LAUNCHER = r"""
import socket
for i in (0, 1):
    c = socket.create_connection((f"rd-workers-0-{i}.rd", 7100), timeout=5)  # no retry: must be ready
    c.sendall(b"go"); c.close()
print("launcher reached both workers", flush=True)
"""


@pytest.mark.parametrize("publish", [True, False])
def test_depends_on_ready_waits_for_readiness_probes(tmp_path, publish):
    probe = {"readinessProbe": {"tcpSocket": {"port": 7100}, "periodSeconds": 1}}
    js = lf.jobset("rd", [("workers", 1, 2, {**lf.py(SERVER), **probe}),
                          ("launcher", 1, 1, lf.py(LAUNCHER))],
                   network={"publishNotReadyAddresses": publish})
    js["spec"]["replicatedJobs"][1]["dependsOn"] = [{"name": "workers", "status": "Ready"}]
    r = lf.run_local(tmp_path, js, args=["--timeout", "60"])
    assert r.returncode == 0, ok(r)
    assert "launcher reached both workers" in r.stdout and r.stdout.count("got go") == 2
    assert r.stdout.index("job rd-launcher-0 created") > r.stdout.index("pod rd-workers-0-1-")


WATCHER = r"""
import os, time, dns.resolver, dns.exception
shared = os.environ["SHARED"]
r = dns.resolver.Resolver(configure=False); r.nameservers = ["198.18.0.1"]
name = "nr-a-0-0.nr.default.svc.cluster.local"
while not os.path.exists(f"{shared}/a-running"):
    time.sleep(0.05)
try:
    r.resolve(name, "A", lifetime=3)
    print("watcher: record of a not-ready pod", flush=True)
except dns.resolver.NXDOMAIN:
    print("watcher: no record while not ready", flush=True)
open(f"{shared}/b-saw", "w").close()
while True:
    try:
        print("watcher: record once ready", r.resolve(name, "A", lifetime=3)[0].address, flush=True)
        break
    except dns.resolver.NXDOMAIN:
        time.sleep(0.05)
open(f"{shared}/b-done", "w").close()
"""

NOT_READY_YET = r"""
s=$SHARED
touch "$s/a-running"
while [ ! -e "$s/b-saw" ]; do sleep 0.05; done
touch "$s/ready"
while [ ! -e "$s/b-done" ]; do sleep 0.05; done
"""


def test_publish_not_ready_addresses_false_publishes_only_ready_pods(tmp_path):
    env = {"env": [{"name": "SHARED", "value": str(tmp_path)}]}
    probe = {"readinessProbe": {"exec": {"command": ["test", "-e", f"{tmp_path}/ready"]}, "periodSeconds": 1}}
    js = lf.jobset("nr", [("a", 1, 1, {**lf.sh(NOT_READY_YET), **env, **probe}),
                          ("b", 1, 1, {**lf.py(WATCHER), **env})],
                   network={"publishNotReadyAddresses": False})
    r = lf.run_local(tmp_path, js, args=["--timeout", "60"])
    assert r.returncode == 0, ok(r)
    assert "watcher: no record while not ready" in r.stdout
    assert "watcher: record once ready 198.18." in r.stdout


def test_unsupported_input_is_named_before_anything_starts(tmp_path):
    js = lf.jobset("bad", [("w", 1, 1, {"command": ["true"], "readinessProbe": {"grpc": {"port": 1}}})])
    r = lf.run_local(tmp_path, js)
    assert r.returncode == 2 and "grpc probes are not supported" in r.stderr, ok(r)
    js = lf.jobset("bad", [("w", 1, 1, {"args": ["x"]})])
    r = lf.run_local(tmp_path, js)
    assert r.returncode == 2 and "has no command" in r.stderr and "Traceback" not in r.stderr, ok(r)


def test_secret_and_configmap_volumes_with_subpath_at_missing_paths(tmp_path):
    import base64
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
              "data": {"token": base64.b64encode(b"s3cret").decode()}}
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"a.conf": "x=1\n"}}
    check = ('cat /opt/jsr-missing/deep/token; echo; cat /etc/jsr-cfg/a.conf; '
             'if echo no > /etc/jsr-cfg/a.conf 2>/dev/null; then echo writable; else echo read-only; fi')
    c = {**lf.sh(check), "volumeMounts": [
        {"name": "creds", "mountPath": "/opt/jsr-missing/deep/token", "subPath": "token"},
        {"name": "cfg", "mountPath": "/etc/jsr-cfg"}]}
    pod = {"volumes": [{"name": "creds", "secret": {"secretName": "creds"}},
                       {"name": "cfg", "configMap": {"name": "cfg"}}]}
    js = lf.jobset("vol", [("w", 1, 1, c, {}, pod)])
    r = lf.run_local(tmp_path, js, secret, cm, args=["--timeout", "60"])
    assert r.returncode == 0, ok(r)
    assert "s3cret" in r.stdout and "x=1" in r.stdout and "read-only" in r.stdout, ok(r)
    import os
    assert not os.path.exists("/opt/jsr-missing") and not os.path.exists("/etc/jsr-cfg")
