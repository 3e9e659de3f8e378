"""What a JobSet looks like once the API server has defaulted it, before it is validated.

A create goes: decode + the CRD's structural defaults (`default:` in the
openAPIV3Schema) -> JobSet's mutating webhook (Default) -> the schema and its
CEL rules -> JobSet's validating webhook (ValidateCreate).  The rules after that
see the defaulted object, so `validate` defaults first, exactly like this:

- `crd_defaults`: k8s.io/apiextensions-apiserver pkg/apiserver/schema/defaulting
  (algorithm.go, Default): in every object present, a property with a `default`
  that is absent (or a null the schema does not allow) gets a copy of the default;
  then recurse into properties, additionalProperties and array items.
- without a CRD, the JobSet's own `+kubebuilder:default` markers
  (kubernetes-sigs/jobset api/jobset/v1alpha2/jobset_types.go), the only CRD
  defaults a JobSet rule reads.
- `webhook_defaults`: kubernetes-sigs/jobset pkg/webhooks/jobset_webhook.go (Default).

All pure: each returns a defaulted deep copy.  docs/manifests.md lists every default.
"""

from __future__ import annotations

import copy

from .. import contract

# jobset_types.go +kubebuilder:default markers, as (path of object keys, '*' for
# every array item, field, value): applied in objects that are present.
JOBSET_CRD_DEFAULTS = (
    (("spec", "replicatedJobs", "*"), "groupName", contract.DEFAULT_GROUP_NAME),
    (("spec", "replicatedJobs", "*"), "replicas", 1),
    (("spec", "failurePolicy"), "restartStrategy", "Recreate"),
    (("spec", "volumeClaimPolicies", "*", "retentionPolicy"), "whenDeleted", "Delete"),
)

INT32_MAX = 2 ** 31 - 1
# jobset_webhook.go defaultRuleNameFmt.
RULE_NAME_FORMAT = "failurePolicyRule{}"


def _is_non_nullable_null(value, schema: dict) -> bool:
    return value is None and not schema.get("nullable", False)


def crd_defaults(value, schema: dict):
    """A copy of `value` with the structural schema's defaults applied."""
    value = copy.deepcopy(value)
    _default(value, schema)
    return value


def _default(value, schema: dict) -> None:
    if not isinstance(schema, dict):
        return
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key, prop in props.items():
            if isinstance(prop, dict) and "default" in prop and \
                    (key not in value or _is_non_nullable_null(value[key], prop)):
                value[key] = copy.deepcopy(prop["default"])
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in props:
                _default(item, props[key])
            elif isinstance(extra, dict):
                _default(item, extra)
    elif isinstance(value, list):
        for item in value:
            _default(item, schema.get("items") or {})


def jobset_crd_defaults(doc: dict) -> dict:
    """The JobSet's own CRD defaults, for when no CRD is at hand."""
    doc = copy.deepcopy(doc)
    for parents, key, default in JOBSET_CRD_DEFAULTS:
        for obj in _objects_at(doc, parents):
            if obj.get(key) is None:
                obj[key] = copy.deepcopy(default)
    return doc


def _objects_at(value, parents: tuple):
    if not parents:
        if isinstance(value, dict):
            yield value
        return
    head, rest = parents[0], parents[1:]
    if head == "*":
        for item in value if isinstance(value, list) else ():
            yield from _objects_at(item, rest)
    elif isinstance(value, dict) and head in value:
        yield from _objects_at(value[head], rest)


def _child(obj: dict, key: str) -> dict | None:
    """obj[key] as a mapping, made when absent (a Go struct's zero value); None when
    the document holds something else there (the schema reports it)."""
    if obj.get(key) is None:
        obj[key] = {}
    return obj[key] if isinstance(obj[key], dict) else None


def webhook_defaults(doc: dict) -> dict:
    """jobset_webhook.go Default, on a copy of a JobSet document."""
    doc = copy.deepcopy(doc)
    spec = _child(doc, "spec")
    if spec is None:
        return doc
    if spec.get("successPolicy") is None:
        spec["successPolicy"] = {"operator": "All"}
    if spec.get("startupPolicy") is None:
        spec["startupPolicy"] = {"startupPolicyOrder": "AnyOrder"}
    for rjob in spec.get("replicatedJobs") or []:
        if not isinstance(rjob, dict):
            continue
        template = _child(rjob, "template")
        job = _child(template, "spec") if template is not None else None
        if job is None:
            continue
        if job.get("completionMode") is None:
            job["completionMode"] = "Indexed"
        pod_template = _child(job, "template")
        pod = _child(pod_template, "spec") if pod_template is not None else None
        if pod is not None and not pod.get("restartPolicy"):
            pod["restartPolicy"] = "OnFailure"
        if pod is not None:
            # The webhook answers with the whole object re-encoded from Go types: a container
            # without a name comes back with `name: ""` (k8s.io/api core/v1 Container.Name has
            # no omitempty), so the schema's `required: [name]` holds; the Job API refuses it later.
            for kind in ("initContainers", "containers"):
                for c in pod.get(kind) or []:
                    if isinstance(c, dict) and c.get("name") is None:
                        c["name"] = ""
    net = _child(spec, "network")
    if net is not None:
        for key in ("enableDNSHostnames", "publishNotReadyAddresses"):
            if net.get(key) is None:
                net[key] = True
    policy = spec.get("failurePolicy")
    if isinstance(policy, dict):
        for i, rule in enumerate(policy.get("rules") or []):
            if isinstance(rule, dict) and not rule.get("name"):
                rule["name"] = RULE_NAME_FORMAT.format(i)
    for vcp in spec.get("volumeClaimPolicies") or []:
        if isinstance(vcp, dict) and vcp.get("retentionPolicy") is None:
            vcp["retentionPolicy"] = {"whenDeleted": "Delete"}
    return doc


def _whole_numbers(value):
    """2.0 -> 2 everywhere: what the JobSet's integer fields hold once the webhook's round
    trip through Go types has written them back (a whole float decodes into an int32)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


def request_defaults(doc: dict) -> dict:
    """What the API server fills in on the request itself: the namespace (kubectl
    sends its context's, `default` unless told otherwise); whole numbers as integers."""
    doc = _whole_numbers(copy.deepcopy(doc))
    meta = doc.get("metadata")
    if isinstance(meta, dict) and not meta.get("namespace"):
        meta["namespace"] = "default"
    return doc


def job_defaults(job_spec: dict) -> dict:
    """The Job API's defaults, applied when the JobSet controller creates each Job
    (kubernetes pkg/apis/batch/v1/defaults.go SetDefaults_Job): both completions and
    parallelism 1 when neither is set, else parallelism 1 when unset (completions
    stays unset); backoffLimit 6, or MaxInt32 with backoffLimitPerIndex (KEP-3850)."""
    job = copy.deepcopy(job_spec) if isinstance(job_spec, dict) else {}
    if job.get("completions") is None and job.get("parallelism") is None:
        job["completions"] = 1
        job["parallelism"] = 1
    if job.get("parallelism") is None:
        job["parallelism"] = 1
    if job.get("backoffLimit") is None:
        job["backoffLimit"] = INT32_MAX if job.get("backoffLimitPerIndex") is not None else 6
    return job


def apply(doc: dict, crd_schema: dict | None = None) -> dict:
    """The JobSet as the validating webhook sees it: request, CRD, then webhook defaults."""
    doc = request_defaults(doc)
    if crd_schema is not None:
        doc = crd_defaults(doc, crd_schema)
    else:
        doc = jobset_crd_defaults(doc)
    return webhook_defaults(doc)
