"""The CRD's half of the API server's verdict: its structural schema and CEL rules.

- `schema_issues`: the CRD's structural openAPIV3Schema, strictly, like
  `kubectl apply` (whose default is --validate=strict: unknown fields are errors
  except under x-kubernetes-preserve-unknown-fields).
- `cel_issues`: the schema's `x-kubernetes-validations` rules, evaluated with a
  CEL evaluator (cel-python, the `manifests` extra, imported only here) on the
  defaulted object, as k8s.io/apiextensions-apiserver pkg/apiserver/schema/cel
  does on create: transition rules (those reading `oldSelf`) do not run on create;
  a rule that cannot be evaluated (a field it reads is absent) rejects the object,
  as the API server does with its "no such key" error.
- `object_meta_issues`: the root metadata, which the CRD only types as `object`:
  the API server validates it itself (k8s.io/apimachinery pkg/api/validation
  objectmeta.go ValidateObjectMeta; a custom resource's name must be a DNS-1123
  subdomain, label keys qualified names and values label values, annotation keys
  qualified names).

The CRD is upstream data: users pass their cluster's (`kubectl get crd
jobsets.jobset.x-k8s.io -o yaml`); tests find v0.12.0's through `crd_path`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..errors import ConfigError
from . import names
from .documents import load_documents
from .issues import Issue, type_name

_INT32 = (-(2 ** 31), 2 ** 31 - 1)
_INT64 = (-(2 ** 63), 2 ** 63 - 1)

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


def _type_ok(value, schema: dict) -> bool:
    got = type_name(value)
    if schema.get("x-kubernetes-int-or-string"):
        # A resource.Quantity (the int-or-string with the quantity pattern) takes any JSON
        # number: the JobSet webhook's round trip through Go types (k8s.io/apimachinery
        # pkg/api/resource, Quantity.UnmarshalJSON) hands the API server 1.5 as "1500m".
        quantity = got == "number" and "pattern" in schema
        return got in ("integer", "string") or quantity
    want = schema.get("type")
    if want is None:
        return True
    if want == "number":
        return got in ("integer", "number")
    if want == "integer" and got == "number":
        # 2.0 is an integer to the API server (kube-openapi's validator takes a float64
        # with no fractional part; the webhook's round trip writes it as 2).
        return float(value).is_integer()
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
        out.append(Issue(path, f"type: expected {want}, got {type_name(value)} ({value!r:.40})",
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


def object_meta_issues(meta, path: str) -> list:
    """The root metadata as the API server checks it (objectmeta.go ValidateObjectMeta)."""
    out = []
    if not isinstance(meta, dict):
        return [Issue(path, f"type: expected object, got {type_name(meta)}", "write metadata as a mapping")]
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
            else:
                out += _meta_map_issues(key, value, f"{path}.{key}")
        elif kind in ("string", "integer", "list") and value is not None and \
                type_name(value) != {"list": "array"}.get(kind, kind):
            out.append(Issue(f"{path}.{key}", f"type: expected {kind}, got {type_name(value)}", f"write a {kind}"))
    name = meta.get("name")
    if not name and not meta.get("generateName"):
        out.append(Issue(f"{path}.name", "Required value: name or generateName is required", "set metadata.name"))
    elif isinstance(name, str) and name:
        # A custom resource's name is a path segment and a DNS-1123 subdomain
        # (apiextensions-apiserver customresource strategy, NameIsDNSSubdomain).
        for problem in names.dns1123_subdomain(name):
            out.append(Issue(f"{path}.name", f"Invalid value {name!r}: {problem}", "rename it"))
    return out


def _meta_map_issues(key: str, value: dict, path: str) -> list:
    """Label keys qualified names and values label values (ValidateLabels); annotation
    keys qualified names, all annotations at most 256 KiB (ValidateAnnotations)."""
    out = []
    for k, v in value.items():
        for problem in names.qualified_name(str(k)):
            out.append(Issue(f"{path}[{k!r}]", f"Invalid key: {problem}", "use a key like example.com/name"))
        if key == "labels":
            for problem in names.label_value(v):
                out.append(Issue(f"{path}[{k!r}]", f"Invalid value {v!r}: {problem}", "shorten or simplify it"))
    if key == "annotations" and sum(len(k) + len(v) for k, v in value.items()) > 256 * 1024:
        out.append(Issue(path, "Too long: annotations may hold at most 262144 bytes", "move data elsewhere"))
    return out


# --- CEL: x-kubernetes-validations ------------------------------------------------

_PROGRAMS: dict = {}


def _cel_program(rule: str):
    if rule not in _PROGRAMS:
        from ..extras import require

        require("manifests", "evaluating the CRD's x-kubernetes-validations (CEL) rules", ["celpy"])
        import celpy  # lazy: only `validate --crd` evaluates CEL
        env = celpy.Environment()
        _PROGRAMS[rule] = env.program(env.compile(rule))
    return _PROGRAMS[rule]


def _cel_value(value):
    import celpy

    return celpy.json_to_cel(value)


def cel_issues(value, schema: dict, path: str = "") -> list:
    """Every create-time CEL rule of `schema` that `value` breaks."""
    out: list = []
    _cel_walk(value, schema, path, out)
    return out


def _cel_walk(value, schema: dict, path: str, out: list) -> None:
    if value is None or not isinstance(schema, dict):
        return
    for rule in schema.get("x-kubernetes-validations") or ():
        text = rule.get("rule", "")
        if "oldSelf" in text:
            continue  # a transition rule: it runs on update only
        out += _cel_rule_issues(value, rule, path)
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            child = props.get(key) if key in props else (extra if isinstance(extra, dict) else None)
            if child is not None:
                _cel_walk(item, child, f"{path}.{key}", out)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _cel_walk(item, schema["items"], f"{path}[{i}]", out)


def _cel_rule_issues(value, rule: dict, path: str) -> list:
    text = rule["rule"]
    program = _cel_program(text)
    import celpy

    where = path + (rule.get("fieldPath") or "")
    try:
        result = program.evaluate({"self": _cel_value(value)})
    except celpy.CELEvalError as exc:
        # The API server rejects the object when a rule cannot be evaluated
        # (e.g. "no such key" for a field the rule reads and the object lacks).
        detail = exc.args[0] if exc.args else str(exc)
        return [Issue(where, f"Invalid value: CEL rule {text!r} could not be evaluated: {detail}",
                      "set the fields the rule reads")]
    if isinstance(result, celpy.CELEvalError):
        detail = result.args[0] if result.args else str(result)
        return [Issue(where, f"Invalid value: CEL rule {text!r} could not be evaluated: {detail}",
                      "set the fields the rule reads")]
    if not bool(result):
        message = rule.get("message") or f"failed rule: {text}"
        return [Issue(where, f"Invalid value: {message} (x-kubernetes-validations rule {text!r})",
                      "change the object so the rule holds")]
    return []


def crd_issues(doc: dict, crd: Crd, path: str = "") -> list:
    """The document against the CRD: apiVersion/kind, root metadata, the schema, then
    its CEL rules (the API server runs them only on an object the schema accepts)."""
    api_version, kind = doc.get("apiVersion", ""), doc.get("kind", "")
    schema = crd.schema_for(api_version) if isinstance(api_version, str) else None
    if schema is None:
        versions = ", ".join(f"{crd.group}/{v}" for v in crd.schemas)
        return [Issue(f"{path}.apiVersion", f"{api_version!r} is not served by this CRD", f"use {versions}")]
    if kind != crd.kind:
        return [Issue(f"{path}.kind", f"{kind!r} is not this CRD's kind", f"use {crd.kind}")]
    out = object_meta_issues(doc.get("metadata"), f"{path}.metadata")
    rest = {k: v for k, v in doc.items() if k != "metadata"}
    root = {**schema, "properties": {k: v for k, v in (schema.get("properties") or {}).items() if k != "metadata"}}
    root["properties"].setdefault("apiVersion", {"type": "string"})
    root["properties"].setdefault("kind", {"type": "string"})
    out += schema_issues(rest, root, path)
    if out:
        return out
    return cel_issues(rest, root, path)


def crd_path() -> str | None:
    """Where the JobSet CRD is found when none is named: $JOBSET_CRD; when it is unset (not
    set empty), the CRD the control-plane build took from sigs.k8s.io/jobset, if that build
    is there (`./dev control-plane`; never a build from here)."""
    import os

    from .. import contract

    env = os.environ.get(contract.JOBSET_CRD_ENV)
    if env is not None:
        return env or None
    from ..local.controlplane import build

    cached = build.cached_dir() / contract.JOBSET_CRD_FILE
    return str(cached) if build.is_complete(build.cached_dir()) else None
