"""Defaulting before validation, name rules, CEL evaluation: the pieces of the API server's verdict."""

import os

import pytest

from jobset_runtime.manifests import defaults, names, schema
from jobset_runtime.manifests.validate import FeatureGates
from jobset_runtime.errors import ConfigError


def _crd_defaults_outside_templates(node, path=()):
    """(object path, field, default) for every `default:` of the JobSet's own types: the
    schema outside the embedded Job and PVC templates (Kubernetes types, not JobSet's)."""
    out = []
    for key, prop in (node.get("properties") or {}).items():
        if key in ("template", "templates", "status"):
            continue
        if "default" in prop:
            out.append((path, key, prop["default"]))
        if prop.get("type") == "array" and isinstance(prop.get("items"), dict):
            out += _crd_defaults_outside_templates(prop["items"], path + (key, "*"))
        elif prop.get("type") == "object":
            out += _crd_defaults_outside_templates(prop, path + (key,))
    return out


def test_fallback_defaults_are_exactly_the_crds_own(crd):
    found = _crd_defaults_outside_templates(crd.schemas["v1alpha2"])
    assert sorted(found, key=repr) == sorted(defaults.JOBSET_CRD_DEFAULTS, key=repr)


def test_every_webhook_default():
    doc = {"metadata": {"name": "d"}, "spec": {
        "replicatedJobs": [{"name": "w", "template": {"spec": {"template": {"spec": {"containers": []}}}}}],
        "failurePolicy": {"rules": [{"action": "FailJobSet"}, {"name": "keep", "action": "FailJobSet"}]},
        "volumeClaimPolicies": [{"templates": []}]}}
    out = defaults.apply(doc)
    spec = out["spec"]
    assert out["metadata"]["namespace"] == "default"
    assert spec["successPolicy"] == {"operator": "All"}
    assert spec["startupPolicy"] == {"startupPolicyOrder": "AnyOrder"}
    assert spec["network"] == {"enableDNSHostnames": True, "publishNotReadyAddresses": True}
    assert [r["name"] for r in spec["failurePolicy"]["rules"]] == ["failurePolicyRule0", "keep"]
    assert spec["failurePolicy"]["restartStrategy"] == "Recreate"
    assert spec["volumeClaimPolicies"][0]["retentionPolicy"] == {"whenDeleted": "Delete"}
    rjob = spec["replicatedJobs"][0]
    assert (rjob["replicas"], rjob["groupName"]) == (1, "default")
    assert rjob["template"]["spec"]["completionMode"] == "Indexed"
    assert rjob["template"]["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    assert "namespace" not in doc["metadata"] and "successPolicy" not in doc["spec"]  # a copy


def test_webhook_keeps_what_is_set():
    doc = {"metadata": {"name": "d", "namespace": "ns"}, "spec": {
        "network": {"enableDNSHostnames": False, "subdomain": "s"}, "replicatedJobs": [
            {"name": "w", "replicas": 0, "template": {"spec": {"completionMode": "NonIndexed",
                                                               "template": {"spec": {"restartPolicy": "Never"}}}}}]}}
    out = defaults.apply(doc)
    assert out["metadata"]["namespace"] == "ns"
    assert out["spec"]["network"] == {"enableDNSHostnames": False, "subdomain": "s", "publishNotReadyAddresses": True}
    rjob = out["spec"]["replicatedJobs"][0]
    assert rjob["replicas"] == 0
    assert rjob["template"]["spec"]["completionMode"] == "NonIndexed"
    assert rjob["template"]["spec"]["template"]["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize("job, completions, parallelism, backoff", [
    ({}, 1, 1, 6),
    ({"parallelism": 3}, None, 3, 6),
    ({"completions": 4}, 4, 1, 6),
    ({"completions": 2, "parallelism": 2, "backoffLimitPerIndex": 1}, 2, 2, 2 ** 31 - 1),
])
def test_job_api_defaults(job, completions, parallelism, backoff):
    out = defaults.job_defaults(job)
    assert (out.get("completions"), out["parallelism"], out["backoffLimit"]) == (completions, parallelism, backoff)


def test_structural_defaulting_algorithm():
    sch = {"type": "object", "properties": {
        "a": {"type": "integer", "default": 1},
        "n": {"type": "string", "default": "x"},
        "keep": {"type": "string", "nullable": True, "default": "y"},
        "items": {"type": "array", "items": {"type": "object", "properties": {"p": {"type": "string", "default": "TCP"}}}},
        "m": {"type": "object", "additionalProperties": {"type": "object", "properties": {"q": {"default": 0}}}},
        "absent": {"type": "object", "properties": {"z": {"default": 5}}}}}
    out = defaults.crd_defaults({"n": None, "keep": None, "items": [{}, {"p": "UDP"}], "m": {"k": {}}}, sch)
    # absent and non-nullable nulls are defaulted; a nullable null stays; objects not present are not made
    assert out == {"n": "x", "keep": None, "items": [{"p": "TCP"}, {"p": "UDP"}], "m": {"k": {"q": 0}}, "a": 1}


@pytest.mark.parametrize("fn, value, ok", [
    (names.dns1035_label, "a-1", True), (names.dns1035_label, "1a", False), (names.dns1035_label, "a" * 64, False),
    (names.dns1123_subdomain, "a.b-c", True), (names.dns1123_subdomain, "A.b", False),
    (names.label_value, "", True), (names.label_value, "a_B.c", True), (names.label_value, "-a", False),
    (names.label_value, "a" * 64, False),
    (names.qualified_name, "example.com/My_name", True), (names.qualified_name, "name", True),
    (names.qualified_name, "/name", False), (names.qualified_name, "a/b/c", False),
    (names.qualified_name, "Example.com/x", False),
    (names.domain_prefixed_path, "kueue.x-k8s.io/multikueue", True), (names.domain_prefixed_path, "x", False),
    (names.domain_prefixed_path, "a.io/", False), (names.domain_prefixed_path, "a.io/b c", False),
])
def test_name_rules(fn, value, ok):
    assert (fn(value) == []) == ok, fn(value)


def test_both_length_and_format_are_reported():
    assert len(names.dns1035_label("A" * 64)) == 2


def test_cel_rules_on_create():
    pytest.importorskip("celpy")
    sch = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "object", "properties": {
        "c": {"type": "integer"}}}},
           "x-kubernetes-validations": [
               {"rule": "self.a > 0", "message": "a must be positive"},
               {"rule": "self == oldSelf", "message": "immutable"},
               {"rule": "self.b.c == 1", "message": "c is one", "fieldPath": ".b.c"}]}
    assert schema.cel_issues({"a": 1, "b": {"c": 1}}, sch) == []  # the oldSelf rule is skipped on create
    got = {i.path: i.rule for i in schema.cel_issues({"a": 0, "b": {"c": 2}}, sch)}
    assert set(got) == {"", ".b.c"} and "a must be positive" in got[""] and "c is one" in got[".b.c"]
    missing = schema.cel_issues({"a": 1}, sch)  # self.b is absent: the rule cannot be evaluated
    assert [i.path for i in missing] == [".b.c"] and "could not be evaluated" in missing[0].rule


def test_feature_gates_parse():
    gates = FeatureGates.parse("InPlaceRestart=true, RestartJob=false")
    assert gates.enabled("InPlaceRestart") and not gates.enabled("RestartJob") and gates.enabled("TLSOptions")
    for bad in ("Nope=true", "RestartJob", "RestartJob=yes"):
        with pytest.raises(ConfigError):
            FeatureGates.parse(bad)


UPSTREAM_EXAMPLES_ENV = "JOBSET_RUNTIME_UPSTREAM_EXAMPLES"


def test_upstream_examples_are_accepted(crd):
    """JobSet's own examples (site/static/examples of kubernetes-sigs/jobset, not shipped
    here): every JobSet in them is accepted, those using alpha features with their gates."""
    root = os.environ.get(UPSTREAM_EXAMPLES_ENV)
    if not root:
        pytest.skip(f"set {UPSTREAM_EXAMPLES_ENV} to a checkout's site/static/examples to check them")
    from jobset_runtime.manifests import validate

    gates = FeatureGates.parse("InPlaceRestart=true,RestartJob=true")
    count, rejected = 0, []
    for dirpath, _, files in os.walk(root):
        for f in sorted(files):
            if f.endswith(".yaml"):
                v = validate.verdict(validate.load_documents(os.path.join(dirpath, f)), crd, gates)
                count += v.count
                rejected += [f"{f}: {i}" for i in v.api]
    assert count and not rejected, rejected
