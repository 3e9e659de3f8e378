"""jobset_runtime.jobset: what JobSet and the Job controller give each pod."""

import hashlib

from jobset_runtime import contract
from jobset_runtime import jobset as js

JOBSET = {
    "metadata": {"name": "js", "namespace": "ns", "annotations": {contract.EXCLUSIVE_TOPOLOGY_KEY: "pool"}},
    "spec": {
        "network": {"subdomain": "net"},
        "coordinator": {"replicatedJob": "b", "jobIndex": 1, "podIndex": 2},
        "replicatedJobs": [
            {"name": "a", "replicas": 2, "template": {"spec": {"parallelism": 1, "completions": 1, "template": {
                "metadata": {"labels": {"team": "x"}}, "spec": {}}}}},
            {"name": "b", "replicas": 3, "groupName": "g",
             "template": {"spec": {"parallelism": 4, "completions": 4}}},
            {"name": "c", "template": {"spec": {}}},  # replicas 1, one pod: the defaults
        ],
    },
}


def test_labels_and_annotations_of_a_child_pod():
    labels, annotations = js.child_pod_metadata(JOBSET, "b", 2, 3, restart_attempt=1, uid="u1")
    expected = {
        contract.JOBSET_NAME_KEY: "js", contract.REPLICATED_JOB_NAME_KEY: "b",
        contract.REPLICATED_JOB_REPLICAS_KEY: "3", contract.JOB_INDEX_KEY: "2",
        contract.JOB_GLOBAL_INDEX_KEY: "4",  # 2 jobs of `a` come first
        contract.GLOBAL_REPLICAS_KEY: "6", contract.RESTART_ATTEMPT_KEY: "1", contract.JOBSET_UID_KEY: "u1",
        contract.JOB_KEY: hashlib.sha1(b"ns/js-b-2").hexdigest(),
        contract.GROUP_NAME_KEY: "g", contract.GROUP_REPLICAS_KEY: "3", contract.JOB_GROUP_INDEX_KEY: "2",
        contract.COORDINATOR_KEY: "js-b-1-2.net", contract.JOB_COMPLETION_INDEX_KEY: "3",
    }
    assert labels == expected
    assert annotations == {**expected, contract.EXCLUSIVE_TOPOLOGY_KEY: "pool"}


def test_group_indices_count_only_their_group_and_template_labels_stay():
    labels, _ = js.child_pod_metadata(JOBSET, "c", 0, 0)
    assert labels[contract.GROUP_NAME_KEY] == contract.DEFAULT_GROUP_NAME
    assert (labels[contract.GROUP_REPLICAS_KEY], labels[contract.JOB_GROUP_INDEX_KEY]) == ("3", "2")
    assert labels[contract.JOB_GLOBAL_INDEX_KEY] == "5"
    labels, _ = js.child_pod_metadata(JOBSET, "a", 1, 0)
    assert labels["team"] == "x"


def test_topology_hostnames_and_pod_order():
    assert str(js.topology(JOBSET)) == "a:2x1,b:3x4,c:1x1"
    refs = list(js.all_pods(JOBSET))
    assert len(refs) == 2 + 12 + 1
    assert refs[2] == js.PodRef("b", 0, 0) and refs[-1] == js.PodRef("c", 0, 0)
    assert js.pod_hostname("js", "b", 2, 3) == "js-b-2-3"
    assert js.subdomain({"metadata": {"name": "x"}, "spec": {}}) == "x"
