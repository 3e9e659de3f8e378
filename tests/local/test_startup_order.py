"""startupPolicy InOrder on the local runner, and the fields it refuses rather than ignores."""

import localfixtures as lf
import pytest

from jobset_runtime import contract

FAST = ["--crash-backoff", "0.05", "--pod-backoff", "0.05"]


def ok(result):
    return f"rc={result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def ready_when(path: str) -> dict:
    return {"exec": {"command": ["/bin/sh", "-c", f'test -e "{path}"']}, "periodSeconds": 1}


@pytest.mark.netns
def test_in_order_starts_each_replicated_job_after_the_previous_is_ready(tmp_path):
    """jobset_controller.go reconcileReplicatedJobs + startup_policy.go: the workers' Jobs are
    created only once every driver Job is ready; the driver is Ready only after it made
    its marker, so a worker that finds no marker was started too early.  The driver keeps
    running (it is Ready, not Succeeded) until a worker has seen the marker."""
    drv, seen = tmp_path / "driver-up", tmp_path / "worker-saw-it"
    driver = {**lf.sh('sleep 0.5; touch "$1"; until [ -e "$2" ]; do sleep 0.05; done', str(drv), str(seen)),
              "readinessProbe": ready_when(drv)}
    worker = lf.sh('[ -e "$1" ] || { echo "started before the driver was ready"; exit 1; }; '
                   'echo "driver was ready on $(hostname)"; touch "$2"', str(drv), str(seen))
    js = lf.jobset("inord", [("driver", 1, 1, driver), ("workers", 2, 1, worker, {"backoffLimit": 0},
                                                        {"restartPolicy": "Never"})],
                   startupPolicy={"startupPolicyOrder": "InOrder"})
    r = lf.run_local(tmp_path, js, args=["--timeout", "60", *FAST])
    assert r.returncode == 0, ok(r)
    assert r.stdout.count("driver was ready on inord-workers-") == 2, ok(r)
    assert "started before the driver was ready" not in r.stdout
    assert "startupPolicy InOrder: the next replicatedJob waits for driver to be ready" in r.stdout
    lines = r.stdout.splitlines()
    first_worker_job = next(i for i, ln in enumerate(lines) if "job inord-workers-0 created" in ln)
    assert all("job inord-workers" not in ln for ln in lines[:first_worker_job])
    assert any("job inord-driver-0 created" in ln for ln in lines[:first_worker_job])


@pytest.mark.parametrize("mutate, field", [
    (lambda js: js["spec"].update(suspend=True), "spec.suspend"),
    (lambda js: js["spec"].update(managedBy="kueue.x-k8s.io/multikueue"), "spec.managedBy"),
    (lambda js: _pod(js).update(hostNetwork=True), "spec.replicatedJobs[0].template.spec.template.spec.hostNetwork"),
    (lambda js: _pod(js).update(dnsPolicy="Default"),
     "spec.replicatedJobs[0].template.spec.template.spec.dnsPolicy"),
    (lambda js: _pod(js)["containers"][0].update(lifecycle={"preStop": {"exec": {"command": ["true"]}}}),
     "spec.replicatedJobs[0].template.spec.template.spec.containers[0].lifecycle"),
    (lambda js: _job(js).update(successPolicy={"rules": [{"succeededCount": 1}]}),
     "spec.replicatedJobs[0].template.spec.successPolicy"),
    (lambda js: js["spec"].update(volumeClaimPolicies=[{"templates": [{"metadata": {"name": "cache"}, "spec": {}}]}])
     or _pod(js)["containers"][0].update(volumeMounts=[{"name": "cache", "mountPath": "/cache"}]),
     "spec.volumeClaimPolicies"),
    (lambda js: js["spec"].update(startupPolicy={"startupPolicyOrder": "InOrder"}, replicatedJobs=[
        js["spec"]["replicatedJobs"][0], {**js["spec"]["replicatedJobs"][0], "name": "v",
                                          "dependsOn": [{"name": "w", "status": "Ready"}]}]), "spec.startupPolicy"),
])
def test_unimplemented_fields_are_refused_by_name(tmp_path, mutate, field):
    js = lf.jobset("refuse", [("w", 1, 1, lf.sh("true"))])
    mutate(js)
    r = lf.run_local(tmp_path, js, args=["--timeout", "30", "--mode", "loopback"])
    assert r.returncode == contract.EXIT_CONFIG, ok(r)
    assert "does not implement" in r.stderr and field in r.stderr, ok(r)
    assert "Traceback" not in r.stderr and "run directory" not in r.stdout


@pytest.mark.parametrize("mutate, words", [
    (lambda js: _job(js).pop("completions"), "jobs: Required value: when completion mode is Indexed"),
    (lambda js: _job(js).update(completions=3), "runtime: completions (3) != parallelism (1)"),
    (lambda js: js["spec"].update(replicatedJobs=[]), "runtime: no replicatedJobs"),
    (lambda js: js["spec"].update(network={"subdomain": "a.b"}), "the API server would reject it"),
])
def test_what_validate_rejects_or_warns_about_is_refused(tmp_path, mutate, words):
    js = lf.jobset("refuse", [("w", 1, 1, lf.sh("true"))])
    mutate(js)
    r = lf.run_local(tmp_path, js, args=["--timeout", "30", "--mode", "loopback"])
    assert r.returncode == contract.EXIT_CONFIG and words in r.stderr, ok(r)


def test_fields_with_no_effect_on_one_machine_are_named(tmp_path):
    js = lf.jobset("place", [("w", 1, 1, {**lf.sh("true"), "resources": {"limits": {"cpu": "1"}}}, {},
                              {"nodeSelector": {"pool": "a"}})])
    r = lf.run_local(tmp_path, js, args=["--timeout", "30", "--mode", "loopback"])
    assert r.returncode == 0, ok(r)
    assert "notice: no effect on one machine" in r.stderr
    assert "spec.replicatedJobs[0].template.spec.template.spec.nodeSelector" in r.stderr
    assert "spec.replicatedJobs[0].template.spec.template.spec.containers[0].resources" in r.stderr


def test_restart_job_action_is_refused_with_the_api_servers_words(tmp_path):
    """RestartJob needs an alpha feature gate the API server has off by default; the runner
    would refuse it even with the gate on (it recreates every Job on a restart)."""
    js = lf.jobset("refuse", [("w", 1, 1, lf.sh("true"))],
                   failurePolicy={"rules": [{"name": "one", "action": "RestartJob"}]})
    r = lf.run_local(tmp_path, js, args=["--timeout", "30", "--mode", "loopback"])
    assert r.returncode == contract.EXIT_CONFIG, ok(r)
    assert ".spec.failurePolicy.rules[0].action: RestartJob" in r.stderr and "feature gate" in r.stderr


def test_support_table_refuses_restart_job_even_with_its_gate():
    from jobset_runtime.local.support import review
    from jobset_runtime.manifests import defaults

    js = defaults.apply(lf.jobset("refuse", [("w", 1, 1, lf.sh("true"))],
                                  failurePolicy={"rules": [{"name": "one", "action": "RestartJob"}]}))
    refused, _ = review(js)
    assert refused == ["spec.failurePolicy.rules[0].action (RestartJob; use RestartJobSet)"]


def _job(js):
    return js["spec"]["replicatedJobs"][0]["template"]["spec"]


def _pod(js):
    return _job(js)["template"]["spec"]
