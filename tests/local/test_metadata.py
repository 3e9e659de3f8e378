"""Table tests: the metadata the runner gives each pod is what JobSet and the Job controller set.

Expected values are written out by hand from JobSet's rules (kubernetes-sigs/jobset
pkg/controllers/jobset_controller.go labelAndAnnotateObject; REFERENCE.md), not computed
by the code under test.
"""

import hashlib

import pytest

from jobset_runtime.local.controller import pod_metadata
from jobset_runtime.local.spec import apply_defaults

import localfixtures as lf

P = "jobset.sigs.k8s.io/"


def sha1(s):
    return hashlib.sha1(s.encode()).hexdigest()


TWO_RJOBS = lf.jobset("demo", [("launcher", 1, 1, lf.sh("true")), ("workers", 2, 2, lf.sh("true"))],
                      coordinator={"replicatedJob": "launcher"})
GROUPS = lf.jobset("g", [("a", 2, 1, lf.sh("true")), ("b", 3, 1, lf.sh("true")), ("c", 1, 4, lf.sh("true"))])
GROUPS["spec"]["replicatedJobs"][1]["groupName"] = "other"
SUBDOMAIN = lf.jobset("net", [("w", 1, 2, lf.sh("true"))], network={"subdomain": "mesh"},
                      coordinator={"replicatedJob": "w", "podIndex": 1})
SUBDOMAIN["metadata"]["namespace"] = "team"

CASES = [
    # (jobset, rjob, job index, pod index, restart attempt, expected JobSet keys)
    (TWO_RJOBS, "workers", 1, 1, 0, {
        "jobset-name": "demo", "replicatedjob-name": "workers", "replicatedjob-replicas": "2",
        "job-index": "1", "job-global-index": "2", "global-replicas": "3", "restart-attempt": "0",
        "group-name": "default", "group-replicas": "3", "job-group-index": "2",
        "job-key": sha1("default/demo-workers-1"), "coordinator": "demo-launcher-0-0.demo"}),
    (TWO_RJOBS, "launcher", 0, 0, 3, {
        "jobset-name": "demo", "replicatedjob-name": "launcher", "replicatedjob-replicas": "1",
        "job-index": "0", "job-global-index": "0", "global-replicas": "3", "restart-attempt": "3",
        "group-name": "default", "group-replicas": "3", "job-group-index": "0",
        "job-key": sha1("default/demo-launcher-0"), "coordinator": "demo-launcher-0-0.demo"}),
    (GROUPS, "c", 0, 3, 1, {
        "jobset-name": "g", "replicatedjob-name": "c", "replicatedjob-replicas": "1",
        "job-index": "0", "job-global-index": "5", "global-replicas": "6", "restart-attempt": "1",
        "group-name": "default", "group-replicas": "3", "job-group-index": "2",
        "job-key": sha1("default/g-c-0")}),
    (GROUPS, "b", 2, 0, 0, {
        "jobset-name": "g", "replicatedjob-name": "b", "replicatedjob-replicas": "3",
        "job-index": "2", "job-global-index": "4", "global-replicas": "6", "restart-attempt": "0",
        "group-name": "other", "group-replicas": "3", "job-group-index": "2",
        "job-key": sha1("default/g-b-2")}),
    (SUBDOMAIN, "w", 0, 1, 0, {
        "jobset-name": "net", "replicatedjob-name": "w", "replicatedjob-replicas": "1",
        "job-index": "0", "job-global-index": "0", "global-replicas": "1", "restart-attempt": "0",
        "group-name": "default", "group-replicas": "1", "job-group-index": "0",
        "job-key": sha1("team/net-w-0"), "coordinator": "net-w-0-1.mesh"}),
]


@pytest.mark.parametrize("js,rjob,job_index,pod_index,attempt,want", CASES)
def test_pod_metadata_table(js, rjob, job_index, pod_index, attempt, want):
    js = apply_defaults(js)
    js["metadata"]["uid"] = "uid-1"
    labels, annotations = pod_metadata(js, rjob, job_index, pod_index, attempt, job_uid="job-uid")
    expected = {P + k: v for k, v in want.items()}
    expected[P + "jobset-uid"] = "uid-1"
    expected["batch.kubernetes.io/job-completion-index"] = str(pod_index)
    for key, value in expected.items():
        assert labels[key] == value, key
        assert annotations[key] == value, key
    assert not any(k.startswith(P) for k in set(labels) - set(expected))
    if "coordinator" not in want:
        assert P + "coordinator" not in labels
    job = f"{js['metadata']['name']}-{rjob}-{job_index}"
    assert labels["batch.kubernetes.io/job-name"] == labels["job-name"] == job
    assert labels["batch.kubernetes.io/controller-uid"] == "job-uid"


def test_template_metadata_is_kept():
    js = lf.jobset("t", [("w", 1, 1, lf.sh("true"))])
    js["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["metadata"] = {
        "labels": {"app": "x"}, "annotations": {"note": "y"}}
    labels, annotations = pod_metadata(apply_defaults(js), "w", 0, 0, 0)
    assert labels["app"] == "x" and annotations["note"] == "y"


def test_webhook_defaults():
    js = apply_defaults(lf.jobset("d", [("w", 2, 3, lf.sh("true"))]))
    spec = js["spec"]
    assert spec["successPolicy"] == {"operator": "All"}
    assert spec["network"] == {"enableDNSHostnames": True, "publishNotReadyAddresses": True}
    job = spec["replicatedJobs"][0]["template"]["spec"]
    assert job["completionMode"] == "Indexed" and job["backoffLimit"] == 6
    assert job["template"]["spec"]["restartPolicy"] == "OnFailure"
    assert js["metadata"]["namespace"] == "default"
