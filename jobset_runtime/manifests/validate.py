"""Check JobSet manifests the way the API server would, before they reach one.

Two layers, both pure functions from documents to a list of `Issue`s:

- `schema_issues`: the CRD's structural openAPIV3Schema, strictly, like
  `kubectl apply --validate=strict` (unknown fields are errors except under
  x-kubernetes-preserve-unknown-fields).  The CRD is upstream data: users pass
  their cluster's (`kubectl get crd jobsets.jobset.x-k8s.io -o yaml`).
- `webhook_issues`: what JobSet's validating webhook checks and a schema cannot
  (kubernetes-sigs/jobset pkg/webhooks/jobset_webhook.go, ValidateCreate and
  validateFailurePolicy / validateCoordinator), the Job rule that ties
  podFailurePolicy to restartPolicy Never (kubernetes pkg/apis/batch/validation),
  and the runtime's own needs (Indexed Jobs, completions = parallelism).

CEL rules (x-kubernetes-validations) are not evaluated; the only one that matters
on create (StartupPolicy InOrder vs dependsOn) is checked by hand.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .. import contract
from .. import jobset as js
from ..errors import ConfigError


@dataclass(frozen=True)
class Issue:
    """One problem: where (JSON path), which rule, and what to change."""

    path: str
    rule: str
    fix: str

    def __str__(self):
        return f"{self.path or '.'}: {self.rule} -> {self.fix}"


# --- names (k8s.io/apimachinery/pkg/util/validation) -----------------------------

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_RULE_NAME = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
_JOB_FAILURE_REASONS = ("BackoffLimitExceeded", "DeadlineExceeded", "FailedIndexes",
                        "MaxFailedIndexesExceeded", "PodFailurePolicy")
_INT32 = (-(2 ** 31), 2 ** 31 - 1)
_INT64 = (-(2 ** 63), 2 ** 63 - 1)


def dns1035_problem(value: str) -> str | None:
    if len(value) > contract.DNS_LABEL_MAX:
        return f"{value!r} is {len(value)} characters, more than {contract.DNS_LABEL_MAX}"
    if not _DNS1035.match(value):
        return f"{value!r} is not a DNS-1035 label (lower-case letters, digits and '-', starting with a letter)"
    return None


def dns1123_subdomain_problem(value: str) -> str | None:
    if len(value) > 253:
        return f"{value!r} is longer than 253 characters"
    if not _DNS1123_SUBDOMAIN.match(value):
        return f"{value!r} is not a DNS-1123 subdomain (lower-case letters, digits, '-' and '.')"
    return None


# --- CRD structural schema -------------------------------------------------------

# ObjectMeta fields a client may send (k8s.io/apimachinery/pkg/apis/meta/v1 ObjectMeta);
# the API server validates the root metadata itself, the CRD only says `type: object`.
_OBJECT_META = {
    "name": "string", "generateName": "string", "namespace": "string", "labels": "map",
    "annotations": "map", "finalizers": "list", "ownerReferences": "list", "uid": "string",
    "resourceVersion": "string", "generation": "integer", "creationTimestamp": "any",
    "deletionTimestamp": "any", "deletionGracePeriodSeconds": "integer", "managedFields": "list",
    "selfLink": "string",
}


@dataclass(frozen=True)
class Crd:
    """The parts of a CustomResourceDefinition the walker needs."""

    group: str
    kind: str
    schemas: dict  # version name -> openAPIV3Schema

    def schema_for(self, api_version: str) -> dict | None:
        group, _, version = api_version.rpartition("/")
        if group != self.group:
            return None
        return self.schemas.get(version)


def crd_from_dict(doc: dict) -> Crd:
    if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
        raise ConfigError("the CRD file holds no CustomResourceDefinition; export one with "
                          "`kubectl get crd jobsets.jobset.x-k8s.io -o yaml`")
    spec = doc.get("spec") or {}
    schemas = {v["name"]: v["schema"]["openAPIV3Schema"] for v in spec.get("versions", [])
               if v.get("served", True) and v.get("schema", {}).get("openAPIV3Schema")}
    if not schemas:
        raise ConfigError("the CRD has no served version with an openAPIV3Schema")
    return Crd(spec.get("group", ""), (spec.get("names") or {}).get("kind", ""), schemas)


def load_crd(path: str) -> Crd:
    """Read a CRD from YAML or JSON (a `kubectl get crd -o yaml` export will do)."""
    docs = load_documents(path, what="CRD")
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
            return crd_from_dict(doc)
    raise ConfigError(f"{path}: no CustomResourceDefinition in it; export one with "
                      "`kubectl get crd jobsets.jobset.x-k8s.io -o yaml`")


def _type_name(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _type_ok(value, schema: dict) -> bool:
    if schema.get("x-kubernetes-int-or-string"):
        return _type_name(value) in ("integer", "string")
    want = schema.get("type")
    if want is None:
        return True
    got = _type_name(value)
    if want == "number":
        return got in ("integer", "number")
    return got == want


def schema_issues(value, schema: dict, path: str = "") -> list:
    """Every way `value` breaks the structural `schema`, strictly."""
    out: list = []
    _walk(value, schema, path, out)
    return out


def _walk(value, schema: dict, path: str, out: list):
    if value is None:
        # Non-nullable nulls are pruned by the API server, so they are no error here;
        # a required field that is null is reported by its parent.
        return
    if not _type_ok(value, schema):
        want = "integer or string" if schema.get("x-kubernetes-int-or-string") else schema.get("type")
        out.append(Issue(path, f"type: expected {want}, got {_type_name(value)} ({value!r:.40})",
                         f"write a{'n' if str(want)[0] in 'aeiou' else ''} {want}"))
        return
    if "enum" in schema and value not in schema["enum"]:
        out.append(Issue(path, f"enum: {value!r} is not one of {schema['enum']}",
                         f"use one of {', '.join(map(str, schema['enum']))}"))
    if isinstance(value, dict):
        _walk_object(value, schema, path, out)
    elif isinstance(value, list):
        _walk_array(value, schema, path, out)
    elif isinstance(value, str):
        _check_string(value, schema, path, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_number(value, schema, path, out)
    if "anyOf" in schema and not schema.get("x-kubernetes-int-or-string"):
        if all(schema_issues(value, {**branch}, path) for branch in schema["anyOf"]):
            out.append(Issue(path, "anyOf: matches none of the allowed forms", "see the CRD for the forms"))


def _walk_object(value: dict, schema: dict, path: str, out: list):
    props = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    preserve = schema.get("x-kubernetes-preserve-unknown-fields")
    embedded = schema.get("x-kubernetes-embedded-resource")
    for req in schema.get("required") or []:
        if value.get(req) is None:
            out.append(Issue(f"{path}.{req}", "required: field is missing", f"set {req}"))
    for key, item in value.items():
        child = f"{path}.{key}"
        if key in props:
            _walk(item, props[key], child, out)
        elif isinstance(extra, dict):
            _walk(item, extra, child, out)
        elif extra is True or preserve:
            continue
        elif embedded and key in ("apiVersion", "kind", "metadata"):
            continue
        else:
            near = _nearest(key, props)
            hint = f"did you mean {near!r}?" if near else f"known fields: {', '.join(sorted(props)) or 'none'}"
            out.append(Issue(child, "unknown field (strict decoding)", f"remove it; {hint}"))
    for bound, check, word in (("maxProperties", lambda n, b: n > b, "at most"),
                               ("minProperties", lambda n, b: n < b, "at least")):
        if bound in schema and check(len(value), schema[bound]):
            out.append(Issue(path, f"{bound}: {len(value)} entries", f"use {word} {schema[bound]}"))


def _walk_array(value: list, schema: dict, path: str, out: list):
    items = schema.get("items")
    if isinstance(items, dict):
        for i, item in enumerate(value):
            _walk(item, items, f"{path}[{i}]", out)
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        out.append(Issue(path, f"maxItems: {len(value)} items", f"use at most {schema['maxItems']}"))
    if "minItems" in schema and len(value) < schema["minItems"]:
        out.append(Issue(path, f"minItems: {len(value)} items", f"use at least {schema['minItems']}"))
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen = {}
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                continue
            k = tuple(repr(item.get(key)) for key in keys)
            if k in seen:
                out.append(Issue(f"{path}[{i}]", f"list-map: duplicate {'/'.join(keys)} "
                                 f"({', '.join(k)}) also at [{seen[k]}]", "make each entry's key unique"))
            seen.setdefault(k, i)
    elif list_type == "set":
        seen_set = {}
        for i, item in enumerate(value):
            k = repr(item)
            if k in seen_set:
                out.append(Issue(f"{path}[{i}]", f"list-set: duplicate of [{seen_set[k]}]", "remove the duplicate"))
            seen_set.setdefault(k, i)


def _check_string(value: str, schema: dict, path: str, out: list):
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        out.append(Issue(path, f"maxLength: {len(value)} characters", f"use at most {schema['maxLength']}"))
    if "minLength" in schema and len(value) < schema["minLength"]:
        out.append(Issue(path, f"minLength: {len(value)} characters", f"use at least {schema['minLength']}"))
    if "pattern" in schema and not _pattern(schema["pattern"]).search(value):
        out.append(Issue(path, f"pattern: {value!r} does not match {schema['pattern']}", "fix the value's format"))


_PATTERNS: dict = {}


def _pattern(text: str):
    if text not in _PATTERNS:
        _PATTERNS[text] = re.compile(text)
    return _PATTERNS[text]


def _check_number(value, schema: dict, path: str, out: list):
    fmt = schema.get("format")
    lo, hi = {"int32": _INT32, "int64": _INT64}.get(fmt, (None, None))
    if lo is not None and not lo <= value <= hi:
        out.append(Issue(path, f"format {fmt}: {value} out of range", f"use a value in [{lo}, {hi}]"))
    if isinstance(value, float) and not math.isfinite(value):
        out.append(Issue(path, "number: not finite", "use a finite number"))
    if "minimum" in schema:
        low = schema["minimum"]
        if value < low or (schema.get("exclusiveMinimum") is True and value == low):
            out.append(Issue(path, f"minimum: {value} is below {low}", f"use {low} or more"))
    if "maximum" in schema:
        high = schema["maximum"]
        if value > high or (schema.get("exclusiveMaximum") is True and value == high):
            out.append(Issue(path, f"maximum: {value} is above {high}", f"use {high} or less"))


def _nearest(key: str, props) -> str | None:
    import difflib

    found = difflib.get_close_matches(key, list(props), n=1, cutoff=0.75)
    return found[0] if found else None


def _object_meta_issues(meta, path: str) -> list:
    out = []
    if not isinstance(meta, dict):
        return [Issue(path, f"type: expected object, got {_type_name(meta)}", "write metadata as a mapping")]
    for key, value in meta.items():
        kind = _OBJECT_META.get(key)
        if kind is None:
            near = _nearest(key, _OBJECT_META)
            out.append(Issue(f"{path}.{key}", "unknown field (strict decoding)",
                             f"remove it{'; did you mean ' + repr(near) + '?' if near else ''}"))
        elif kind == "map":
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                out.append(Issue(f"{path}.{key}", "type: expected a map of strings",
                                 "quote values such as \"true\" or \"1\""))
        elif kind in ("string", "integer", "list") and value is not None and \
                _type_name(value) != {"list": "array"}.get(kind, kind):
            out.append(Issue(f"{path}.{key}", f"type: expected {kind}, got {_type_name(value)}", f"write a {kind}"))
    if not meta.get("name") and not meta.get("generateName"):
        out.append(Issue(f"{path}.name", "required: name or generateName", "set metadata.name"))
    return out


def crd_issues(doc: dict, crd: Crd, path: str = "") -> list:
    """The document against the CRD: apiVersion/kind, root metadata, then the schema."""
    api_version, kind = doc.get("apiVersion", ""), doc.get("kind", "")
    schema = crd.schema_for(api_version) if isinstance(api_version, str) else None
    if schema is None:
        versions = ", ".join(f"{crd.group}/{v}" for v in crd.schemas)
        return [Issue(f"{path}.apiVersion", f"{api_version!r} is not served by this CRD", f"use {versions}")]
    if kind != crd.kind:
        return [Issue(f"{path}.kind", f"{kind!r} is not this CRD's kind", f"use {crd.kind}")]
    out = _object_meta_issues(doc.get("metadata"), f"{path}.metadata")
    rest = {k: v for k, v in doc.items() if k != "metadata"}
    root = {**schema, "properties": {k: v for k, v in (schema.get("properties") or {}).items() if k != "metadata"}}
    root["properties"].setdefault("apiVersion", {"type": "string"})
    root["properties"].setdefault("kind", {"type": "string"})
    return out + schema_issues(rest, root, path)


# --- JobSet webhook rules ----------------------------------------------------------

def webhook_issues(doc: dict, path: str = "") -> list:
    """JobSet's admission rules (and the runtime's) on a JobSet document.

    Run on the document as written; the webhook's defaults (Indexed, replicas 1,
    parallelism 1) are applied where a rule needs the value.
    """
    out: list = []
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        return [Issue(f"{path}.metadata.name", "required: the JobSet needs a name",
                      "set metadata.name (generateName cannot be checked ahead)")]
    problem = dns1035_problem(name)
    if problem:
        out.append(Issue(f"{path}.metadata.name", f"DNS-1035: {problem}", "rename the JobSet"))

    rjobs = spec.get("replicatedJobs")
    if not isinstance(rjobs, list) or not rjobs:
        return out + [Issue(f"{path}.spec.replicatedJobs", "required: at least one replicatedJob",
                            "add a replicatedJob")]
    names: list = []
    for i, rjob in enumerate(rjobs):
        if isinstance(rjob, dict):
            out += _rjob_issues(name, rjob, f"{path}.spec.replicatedJobs[{i}]", names)
            names.append(rjob.get("name"))

    net = spec.get("network") or {}
    sub = net.get("subdomain") if isinstance(net, dict) else None
    if sub:
        for problem in (dns1123_subdomain_problem(sub), dns1035_problem(sub)):
            if problem:
                out.append(Issue(f"{path}.spec.network.subdomain", f"subdomain: {problem} (it names the "
                                 "headless Service, so it must be a DNS-1035 label)", "pick a shorter, simpler name"))
                break

    success = spec.get("successPolicy") or {}
    for k, target in enumerate(success.get("targetReplicatedJobs") or []):
        if target not in names:
            out.append(Issue(f"{path}.spec.successPolicy.targetReplicatedJobs[{k}]",
                             f"target: {target!r} is not a replicatedJob", f"use one of {names}"))

    out += _failure_policy_issues(spec.get("failurePolicy"), names, f"{path}.spec.failurePolicy")
    if spec.get("coordinator"):
        out += _coordinator_issues(doc, f"{path}.spec.coordinator")

    startup = spec.get("startupPolicy") or {}
    if startup.get("startupPolicyOrder") == "InOrder" and any(isinstance(r, dict) and r.get("dependsOn")
                                                              for r in rjobs):
        out.append(Issue(f"{path}.spec.startupPolicy", "StartupPolicy InOrder and dependsOn are mutually exclusive",
                         "drop startupPolicy and keep dependsOn"))

    managed_by = spec.get("managedBy")
    if isinstance(managed_by, str) and len(managed_by) > 63:
        out.append(Issue(f"{path}.spec.managedBy", "managedBy: longer than 63 characters", "shorten it"))
    return out


def _rjob_issues(js_name: str, rjob: dict, path: str, earlier: list) -> list:
    out = []
    rname = rjob.get("name")
    if not isinstance(rname, str) or not rname:
        return [Issue(f"{path}.name", "required: replicatedJob name", "name the replicatedJob")]
    if rname in earlier:
        out.append(Issue(f"{path}.name", f"duplicate replicatedJob name {rname!r}", "give each a unique name"))
    replicas = rjob.get("replicas", 1)
    jspec = ((rjob.get("template") or {}).get("spec")) or {}
    parallelism = jspec.get("parallelism", 1)
    if not isinstance(replicas, int) or not isinstance(parallelism, int):
        return out  # the schema reports the types
    if replicas * parallelism > 2 ** 31 - 1:
        out.append(Issue(f"{path}.replicas", "replicas x parallelism exceeds 2147483647", "use fewer pods"))
    longest_job = js.job_name(js_name, rname, max(replicas - 1, 0))
    problem = dns1035_problem(longest_job)
    if problem:
        out.append(Issue(f"{path}.name", f"job name: the longest child Job name {problem}",
                         "shorten the JobSet or replicatedJob name"))
    mode = jspec.get("completionMode", "Indexed")  # the webhook defaults it to Indexed
    completions = jspec.get("completions")
    if mode != "Indexed":
        out.append(Issue(f"{path}.template.spec.completionMode", f"runtime: completionMode {mode!r}; "
                         "pods find their rank in the completion index", "use Indexed"))
    if isinstance(completions, int):
        host = js.pod_hostname(js_name, rname, max(replicas - 1, 0), max(completions - 1, 0))
        if len(host) > contract.HOSTNAME_MAX:
            out.append(Issue(f"{path}.name", f"pod name: the longest hostname {host!r} is {len(host)} characters, "
                             f"more than {contract.HOSTNAME_MAX} (63 less the pod-name suffix)",
                             f"shorten the JobSet or replicatedJob name by {len(host) - contract.HOSTNAME_MAX}"))
        elif not _DNS1035.match(host):
            out.append(Issue(f"{path}.name", f"pod name: {host!r} is not a DNS-1035 label",
                             "use lower-case letters, digits and '-' in the names"))
    if completions != parallelism:
        out.append(Issue(f"{path}.template.spec.completions",
                         f"runtime: completions ({completions}) != parallelism ({parallelism}); every pod "
                         "must run at the same time to find its peers", "set both to the pods per Job"))
    deps = rjob.get("dependsOn") or []
    for k, dep in enumerate(deps):
        if isinstance(dep, dict) and dep.get("name") not in earlier:
            out.append(Issue(f"{path}.dependsOn[{k}].name", f"dependsOn: {dep.get('name')!r} is not a "
                             "replicatedJob listed before this one", f"depend on one of {earlier}"))
    pfp = jspec.get("podFailurePolicy")
    pod_spec = ((jspec.get("template") or {}).get("spec")) or {}
    if pfp and pod_spec.get("restartPolicy", "OnFailure") != "Never":
        out.append(Issue(f"{path}.template.spec.template.spec.restartPolicy",
                         "podFailurePolicy needs restartPolicy Never (the JobSet webhook defaults it to OnFailure)",
                         "set restartPolicy: Never"))
    return out


def _failure_policy_issues(policy, names: list, path: str) -> list:
    if not isinstance(policy, dict):
        return []
    out = []
    seen: dict = {}
    for i, rule in enumerate(policy.get("rules") or []):
        if not isinstance(rule, dict):
            continue
        rpath = f"{path}.rules[{i}]"
        rname = rule.get("name") or ""
        if not 1 <= len(rname) <= 128 or not _RULE_NAME.match(rname):
            out.append(Issue(f"{rpath}.name", f"rule name {rname!r}: 1-128 characters, a letter first, then "
                             "letters, digits or '_,:'", "rename the rule, e.g. ConfigurationError"))
        if rname in seen:
            out.append(Issue(f"{rpath}.name", f"rule name {rname!r} also used by rules[{seen[rname]}]",
                             "give each rule a unique name"))
        seen.setdefault(rname, i)
        for k, target in enumerate(rule.get("targetReplicatedJobs") or []):
            if target not in names:
                out.append(Issue(f"{rpath}.targetReplicatedJobs[{k}]", f"target: {target!r} is not a replicatedJob",
                                 f"use one of {names}"))
        for k, reason in enumerate(rule.get("onJobFailureReasons") or []):
            if reason not in _JOB_FAILURE_REASONS:
                out.append(Issue(f"{rpath}.onJobFailureReasons[{k}]", f"{reason!r} is not a Job failure reason",
                                 f"use one of {', '.join(_JOB_FAILURE_REASONS)}"))
    return out


def _coordinator_issues(doc: dict, path: str) -> list:
    coord = doc["spec"]["coordinator"]
    if not isinstance(coord, dict):
        return []
    target = coord.get("replicatedJob")
    rjob = next((r for r in doc["spec"].get("replicatedJobs") or []
                 if isinstance(r, dict) and r.get("name") == target), None)
    if rjob is None:
        return [Issue(f"{path}.replicatedJob", f"coordinator: replicatedJob {target!r} does not exist",
                      "name one of spec.replicatedJobs")]
    job_index, pod_index = coord.get("jobIndex", 0), coord.get("podIndex", 0)
    replicas = rjob.get("replicas", 1)
    jspec = (rjob.get("template") or {}).get("spec") or {}
    completions = jspec.get("completions")
    if not all(isinstance(v, int) for v in (job_index, pod_index, replicas)):
        return []
    if not 0 <= job_index < replicas:
        return [Issue(f"{path}.jobIndex", f"coordinator: jobIndex {job_index} is outside 0..{replicas - 1}",
                      f"use 0..{replicas - 1}")]
    if jspec.get("completionMode", "Indexed") != "Indexed" or not isinstance(completions, int):
        return [Issue(f"{path}.replicatedJob", "coordinator: its Jobs must be Indexed with completions set",
                      "set completionMode Indexed and completions")]
    if not 0 <= pod_index < completions:
        return [Issue(f"{path}.podIndex", f"coordinator: podIndex {pod_index} is outside 0..{completions - 1}",
                      f"use 0..{completions - 1}")]
    endpoint = js.coordinator_endpoint(doc)
    if len(endpoint) > contract.DNS_LABEL_MAX:
        # The coordinator goes into a label value (<= 63); jobset#1056, v0.11.
        return [Issue(path, f"coordinator: label value {endpoint!r} is {len(endpoint)} characters, more than 63",
                      "shorten the JobSet, replicatedJob or subdomain name")]
    return []


# --- documents -----------------------------------------------------------------------

def secret_issues(doc: dict, path: str = "") -> list:
    meta = doc.get("metadata") or {}
    name = meta.get("name") or ""
    problem = dns1123_subdomain_problem(name) if name else "missing"
    out = [Issue(f"{path}.metadata.name", f"Secret name: {problem}", "name the Secret")] if problem else []
    if doc.get("apiVersion") != "v1":
        out.append(Issue(f"{path}.apiVersion", "a Secret is apiVersion v1", "use v1"))
    data = doc.get("data") or {}
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        out.append(Issue(f"{path}.data", "data: a map of base64 strings", "base64-encode each value"))
    return out


def document_issues(docs: list, crd: Crd | None = None) -> tuple[list, int]:
    """(issues, number of JobSets checked) over a list of documents."""
    out, count = [], 0
    for i, doc in enumerate(docs):
        where = f"[{i}]" if len(docs) > 1 else ""
        if doc is None:
            continue
        if not isinstance(doc, dict):
            out.append(Issue(where, f"document is a {_type_name(doc)}", "write a mapping (apiVersion, kind, ...)"))
            continue
        kind = doc.get("kind")
        if kind == contract.JOBSET_KIND:
            count += 1
            if crd is not None:
                out += crd_issues(doc, crd, where)
            out += webhook_issues(doc, where)
        elif kind == "Secret":
            out += secret_issues(doc, where)
    return out, count


def format_issues(issues: list, limit: int = 20) -> str:
    lines = [f"  {issue}" for issue in issues[:limit]]
    if len(issues) > limit:
        lines.append(f"  (+{len(issues) - limit} more)")
    return "\n".join(lines)


def check(docs: list, crd: Crd | None = None) -> int:
    """Raise ConfigError listing every issue; return the number of JobSets checked."""
    issues, count = document_issues(docs, crd)
    if issues:
        raise ConfigError(f"invalid manifest ({len(issues)} problem{'s' if len(issues) > 1 else ''}):\n"
                          + format_issues(issues))
    return count


def load_documents(path: str, what: str = "manifest") -> list:
    """YAML (multi-document) or JSON from a file or `-` (stdin); clean errors, no traceback."""
    import sys

    import yaml

    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        return [d for d in yaml.load_all(text, Loader=loader) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
