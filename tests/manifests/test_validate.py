"""Broken manifests are rejected with the right JSON path; the schema walker's rules."""

import copy

import pytest

from jobset_runtime import contract
from jobset_runtime import manifests
from jobset_runtime.errors import ConfigError
from jobset_runtime.manifests import validate


def base():
    """A valid two-ReplicatedJob JobSet (the MPI shape) to break one field at a time."""
    return copy.deepcopy(manifests.mpi(name="pi", image="i", command=["x"], workers=2)[1])


def rjob(doc, i=0):
    return doc["spec"]["replicatedJobs"][i]


def pod(doc, i=0):
    return rjob(doc, i)["template"]["spec"]["template"]["spec"]


def _set(path):
    def apply(doc):
        *parents, last = path
        target = doc
        for p in parents:
            target = target[p]
        target[last[0]] = last[1]
    return apply


BROKEN = {
    # name: (mutation, expected path, words in the rule or fix)
    "typo in a Job field": (
        lambda d: rjob(d)["template"]["spec"].update(paralelism=2),
        ".spec.replicatedJobs[0].template.spec.paralelism", "did you mean 'parallelism'"),
    "typo in a container field": (
        lambda d: pod(d)["containers"][0].update(imagee="x"),
        ".spec.replicatedJobs[0].template.spec.template.spec.containers[0].imagee", "unknown field"),
    "typo in root metadata": (
        lambda d: d["metadata"].update(labelz={"a": "b"}),
        ".metadata.labelz", "did you mean 'labels'"),
    "label value not a string": (
        lambda d: d["metadata"].update(labels={"a": 1}),
        ".metadata.labels", "map of strings"),
    "replicas as a string": (
        lambda d: rjob(d).update(replicas="2"),
        ".spec.replicatedJobs[0].replicas", "expected integer, got string"),
    "bad quantity": (
        lambda d: pod(d)["containers"][0].update(resources={"limits": {"memory": "16 GB"}}),
        ".spec.replicatedJobs[0].template.spec.template.spec.containers[0].resources.limits.memory", "pattern"),
    "int32 overflow": (
        lambda d: rjob(d).update(replicas=2 ** 31),
        ".spec.replicatedJobs[0].replicas", "int32"),
    "bad enum in failure policy": (
        lambda d: d["spec"]["failurePolicy"]["rules"][0].update(action="Explode"),
        ".spec.failurePolicy.rules[0].action", "enum"),
    "bad enum in dependsOn": (
        lambda d: rjob(d, 1)["dependsOn"][0].update(status="Running"),
        ".spec.replicatedJobs[1].dependsOn[0].status", "enum"),
    # The webhook's defaulting writes template.spec.completionMode and the pod's
    # restartPolicy into a missing template, so the schema then misses the containers.
    "missing required template": (
        lambda d: rjob(d).pop("template"),
        ".spec.replicatedJobs[0].template.spec.template.spec.containers", "required"),
    # Accepted by the API server (the webhook's Go round trip writes `name: ""`); the Job API
    # refuses it when the controller creates the Job: the "jobs" verdict.
    "missing container name": (
        lambda d: pod(d)["containers"][0].pop("name"),
        ".spec.replicatedJobs[0].template.spec.template.spec.containers[0].name", "Required value"),
    "duplicate replicatedJob name": (
        lambda d: rjob(d, 1).update(name="worker"),
        ".spec.replicatedJobs[1]", "list-map: duplicate name"),
    "wrong apiVersion": (
        lambda d: d.update(apiVersion="jobset.x-k8s.io/v1"),
        ".apiVersion", "not served"),
    "too-long name": (
        lambda d: d["metadata"].update(name="a" * 52),
        ".spec.replicatedJobs[0].name", "the longest pod name, with its 5-character suffix): must be no more than 63"),
    # The API server takes any DNS-1123 subdomain as a name; the webhook's Job-name rule catches it.
    "name not DNS-1035": (
        lambda d: d["metadata"].update(name="9lives"),
        ".spec.replicatedJobs[0].name", "'9lives-worker-0' (the longest Job name): a DNS-1035 label"),
    "missing success target": (
        lambda d: d["spec"]["successPolicy"].update(targetReplicatedJobs=["driver"]),
        ".spec.successPolicy.targetReplicatedJobs[0]", "'driver' does not appear in .spec.replicatedJobs"),
    "missing failure-rule target": (
        lambda d: d["spec"]["failurePolicy"]["rules"][0].update(targetReplicatedJobs=["ps"]),
        ".spec.failurePolicy.rules[0].targetReplicatedJobs[0]", "'ps' in failure policy does not appear in .spec.replicatedJobs"),
    "bad failure reason": (
        lambda d: d["spec"]["failurePolicy"]["rules"][0].update(onJobFailureReasons=["OOMKilled"]),
        ".spec.failurePolicy.rules[0].onJobFailureReasons[0]", "not a recognized job failure reason"),
    "bad rule name": (
        lambda d: d["spec"]["failurePolicy"]["rules"][0].update(name="config-error"),
        ".spec.failurePolicy.rules[0].name", "rule name"),
    "dependsOn a later replicatedJob": (
        lambda d: d["spec"].update(replicatedJobs=d["spec"]["replicatedJobs"][::-1]),
        ".spec.replicatedJobs[0].dependsOn[0].name", "listed before"),
    "coordinator in a missing replicatedJob": (
        lambda d: d["spec"]["coordinator"].update(replicatedJob="driver"),
        ".spec.coordinator.replicatedJob", "does not exist"),
    "coordinator pod index out of range": (
        lambda d: d["spec"]["coordinator"].update(replicatedJob="worker", podIndex=2),
        ".spec.coordinator.podIndex", "pod index 2 is invalid for replicatedJob worker job index 0 -> use 0..1"),
    "coordinator job index out of range": (
        lambda d: d["spec"]["coordinator"].update(jobIndex=1),
        ".spec.coordinator.jobIndex", "job index 1 is invalid for replicatedJob launcher -> use 0..0"),
    "coordinator label too long": (
        lambda d: d["spec"]["network"].update(subdomain="s" * 50),
        ".spec.coordinator", "more than 63"),
    "subdomain with a dot": (
        lambda d: d["spec"]["network"].update(subdomain="a.b"),
        ".spec.network.subdomain", "DNS-1035"),
    "completions differ from parallelism": (
        lambda d: rjob(d)["template"]["spec"].update(completions=4),
        ".spec.replicatedJobs[0].template.spec.completions", "completions (4) != parallelism (2)"),
    "podFailurePolicy without restartPolicy Never": (
        lambda d: pod(d).update(restartPolicy="OnFailure"),
        ".spec.replicatedJobs[0].template.spec.template.spec.restartPolicy", "Never"),
    "NonIndexed Jobs": (
        lambda d: rjob(d)["template"]["spec"].update(completionMode="NonIndexed"),
        ".spec.replicatedJobs[0].template.spec.completionMode", "use Indexed"),
}


# Cases only the CRD schema can catch; the others are webhook/runtime rules and run
# without a CRD too.
SCHEMA_CASES = {"typo in a Job field", "typo in a container field", "typo in root metadata",
                "label value not a string", "replicas as a string", "bad quantity", "int32 overflow", "bad enum in failure policy",
                "bad enum in dependsOn", "missing required template", "missing container name",
                "wrong apiVersion"}


# What looks wrong but the API server accepts (checked against a real one in
# tests/local/test_cluster.py): numbers as the JobSet's Go types read them.
ACCEPTED = {
    "parallelism as a float": lambda d: rjob(d)["template"]["spec"].update(parallelism=2.0, completions=2.0),
    "cpu limit as a float": lambda d: pod(d)["containers"][0].update(resources={"limits": {"cpu": 1.5}}),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_what_the_api_server_accepts_is_accepted(case, crd):
    doc = base()
    ACCEPTED[case](doc)
    assert validate.document_issues([doc], crd) == ([], 1)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_manifest_is_rejected_at_its_path(case, request):
    import manifest_cases

    if case in SCHEMA_CASES or manifest_cases.crd_path() is not None:
        crd = request.getfixturevalue("crd")  # skips, with the reason, where the CRD is absent
    else:
        crd = None
    mutate, path, words = BROKEN[case]
    doc = base()
    assert validate.document_issues([doc], crd) == ([], 1)
    mutate(doc)
    issues, _ = validate.document_issues([doc], crd)
    at_path = [i for i in issues if i.path == path]
    assert at_path, f"no issue at {path}; got {[str(i) for i in issues]}"
    assert any(words in f"{i.rule} -> {i.fix}" for i in at_path), [str(i) for i in at_path]


def test_webhook_rules_run_without_a_crd():
    doc = base()
    doc["spec"]["successPolicy"]["targetReplicatedJobs"] = ["driver"]
    with pytest.raises(ConfigError) as err:
        validate.check([doc])
    assert ".spec.successPolicy.targetReplicatedJobs[0]" in str(err.value)
    assert err.value.exit_code == contract.EXIT_CONFIG


def test_hostname_limit_is_exactly_57():
    name = "a" * (contract.HOSTNAME_MAX - len("-worker-0-0"))
    *_, doc = manifests.jax(name=name, subdomain="s", image="i", command=["x"], hosts=1)
    assert len(f"{name}-worker-0-0") == contract.HOSTNAME_MAX
    with pytest.raises(ConfigError, match=r"must be no more than 63 characters \(64\)"):
        manifests.jax(name=name + "a", subdomain="s", image="i", command=["x"], hosts=1)


# --- the walker on small schemas --------------------------------------------------

OBJ = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 3},
                                         "x": {"type": "number"}, "s": {"type": "string", "maxLength": 3}}}


@pytest.mark.parametrize("value, path, rule", [
    ({"n": 0}, ".n", "minimum"),
    ({"n": 4}, ".n", "maximum"),
    ({"n": True}, ".n", "expected integer, got boolean"),
    ({"x": "1"}, ".x", "expected number"),
    ({"s": "abcd"}, ".s", "maxLength"),
    ({"zz": 1}, ".zz", "unknown field"),
])
def test_walker_rejects(value, path, rule):
    issues = validate.schema_issues(value, OBJ)
    assert [(i.path, rule in i.rule) for i in issues] == [(path, True)]


def test_walker_accepts_numbers_preserved_fields_embedded_and_maps():
    assert validate.schema_issues({"x": 1, "n": 2, "s": None}, OBJ) == []  # integer is a number; null pruned
    preserve = {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                "properties": {"a": {"type": "integer"}}}
    assert validate.schema_issues({"anything": {"goes": 1}}, preserve) == []
    assert [i.path for i in validate.schema_issues({"a": "no"}, preserve)] == [".a"]  # known fields still checked
    embedded = {"type": "object", "x-kubernetes-embedded-resource": True, "properties": {"spec": {"type": "object"}}}
    assert validate.schema_issues({"apiVersion": "v1", "kind": "X", "metadata": {}, "spec": {}}, embedded) == []
    strmap = {"type": "object", "additionalProperties": {"type": "string"}}
    assert [i.path for i in validate.schema_issues({"a": "1", "b": 2}, strmap)] == [".b"]
    setlist = {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "integer"}}
    assert [i.path for i in validate.schema_issues([1, 2, 1], setlist)] == ["[2]"]
