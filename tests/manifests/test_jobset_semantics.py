"""jobset_runtime.jobset: what JobSet and the Job controller give each pod."""

import hashlib

from jobset_runtime import contract
from jobset_runtime import jobset as js
from jobset_runtime.podinfo import go_unquote, parse_downward_file

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


def test_downward_files_round_trip_through_the_runtime_reader():
    meta = js.PodMeta("p-x", "ns", {"k": 'va"l\\ue\n'}, {"a/b": "1", "z": "é\t"})
    volume = {"downwardAPI": {"items": [
        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
        {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
        {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
        {"path": "one", "fieldRef": {"fieldPath": "metadata.annotations['a/b']"}},
    ]}}
    files = js.downward_api_files(volume, meta)
    assert parse_downward_file(files["labels"]) == meta.labels
    assert parse_downward_file(files["annotations"]) == meta.annotations
    assert files["annotations"].splitlines()[0].startswith("a/b=")  # sorted by key
    assert (files["name"], files["one"]) == ("p-x", "1")
    for text in ("", "plain", "\x00\x07\x7f", "日本"):
        assert go_unquote(js.go_quote(text)) == text


def test_container_env_resolves_field_refs_and_expansions():
    meta = js.PodMeta("p", "ns", {contract.JOB_INDEX_KEY: "2"}, {})
    container = {"env": [
        {"name": "IDX", "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{contract.JOB_INDEX_KEY}']"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "BOTH", "value": "$(IDX)-$(JOB_COMPLETION_INDEX)-$(NOPE)-$$(IDX)"},
    ]}
    env = js.container_env(container, meta, 5)
    assert env == {"JOB_COMPLETION_INDEX": "5", "IDX": "2", "NS": "ns", "BOTH": "2-5-$(NOPE)-$(IDX)"}


def test_etc_hosts_line_is_what_the_runtime_parses():
    from jobset_runtime.identity import fqdn_from_hosts

    text = js.etc_hosts("10.1.2.3", "js-b-0-0", "net", "ns")
    assert fqdn_from_hosts(text, "js-b-0-0") == ("net", "ns", "cluster.local")
