"""`manifest validate`: the API server's verdict on a manifest, then the runtime's.

A JobSet create is answered in this order, and so is each document here:

1. request + CRD + webhook defaults (defaults.py; every default in docs/manifests.md);
2. the root metadata as the API server checks it, the CRD's structural schema and,
   once that holds, its x-kubernetes-validations CEL rules (schema.py; with a CRD);
3. once those hold, every create-time rule of JobSet's validating webhook, with the
   manager's feature gates (webhook.py).

Those three make the `api` verdict: what `kubectl apply` on a JobSet v0.12 cluster
answers.  Two more verdicts are kept apart (runtime.py): `jobs`, what the Job API
will reject in the child Jobs of an accepted JobSet, and `runtime`, what
jobset-runtime itself needs.  `validate` prints them as warnings;
`--for-runtime`, the generators' self-check (`check`) and the local runner make
them errors.  Everything is pure: documents in, `Verdict` out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import contract
from ..errors import ConfigError
from . import defaults, names
from .documents import load_documents
from .issues import Issue, format_issues, type_name
from .runtime import job_issues, runtime_issues
from .schema import Crd, crd_from_dict, crd_issues, load_crd, object_meta_issues, schema_issues
from .webhook import FeatureGates, webhook_issues

__all__ = ["Crd", "FeatureGates", "Issue", "Verdict", "check", "crd_from_dict", "crd_issues", "document_issues",
           "format_issues", "load_crd", "load_documents", "schema_issues", "secret_issues", "verdict",
           "webhook_issues"]


@dataclass
class Verdict:
    """Every issue of a list of documents, by who raises it."""

    api: list = field(default_factory=list)      # the API server rejects the create
    jobs: list = field(default_factory=list)     # accepted; the Job API rejects its Jobs
    runtime: list = field(default_factory=list)  # jobset-runtime's own needs
    count: int = 0                               # JobSets checked

    def errors(self, for_runtime: bool) -> list:
        return self.api + (self.jobs + self.runtime if for_runtime else [])


def jobset_verdict(doc: dict, crd: Crd | None = None, gates: FeatureGates | None = None,
                   path: str = "") -> Verdict:
    """One JobSet document, defaulted, through the API server's steps, then the others."""
    schema = crd.schema_for(doc.get("apiVersion", "")) if crd is not None and \
        isinstance(doc.get("apiVersion"), str) else None
    defaulted = defaults.apply(doc, schema)
    out = Verdict(count=1)
    if crd is not None:
        out.api = crd_issues(defaulted, crd, path)
    else:
        out.api = object_meta_issues(defaulted.get("metadata"), f"{path}.metadata")
    if not out.api:
        # The validating webhook only sees what the schema accepted.
        out.api = webhook_issues(defaulted, gates, path)
    out.jobs = job_issues(defaulted, path)
    out.runtime = runtime_issues(defaulted, path)
    return out


def secret_issues(doc: dict, path: str = "") -> list:
    meta = doc.get("metadata") or {}
    name = meta.get("name") or ""
    problems = names.dns1123_subdomain(name) if name else ["missing"]
    out = [Issue(f"{path}.metadata.name", f"Secret name: {'; '.join(problems)}", "name the Secret")] if problems else []
    if doc.get("apiVersion") != "v1":
        out.append(Issue(f"{path}.apiVersion", "a Secret is apiVersion v1", "use v1"))
    data = doc.get("data") or {}
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        out.append(Issue(f"{path}.data", "data: a map of base64 strings", "base64-encode each value"))
    return out


def verdict(docs: list, crd: Crd | None = None, gates: FeatureGates | None = None) -> Verdict:
    """Every document's issues; JobSets through jobset_verdict, Secrets checked for shape."""
    out = Verdict()
    for i, doc in enumerate(docs):
        where = f"[{i}]" if len(docs) > 1 else ""
        if doc is None:
            continue
        if not isinstance(doc, dict):
            out.api.append(Issue(where, f"document is a {type_name(doc)}", "write a mapping (apiVersion, kind, ...)"))
            continue
        kind = doc.get("kind")
        if kind == contract.JOBSET_KIND:
            one = jobset_verdict(doc, crd, gates, where)
            out.api += one.api
            out.jobs += one.jobs
            out.runtime += one.runtime
            out.count += 1
        elif kind == "Secret":
            out.api += secret_issues(doc, where)
    return out


def document_issues(docs: list, crd: Crd | None = None, gates: FeatureGates | None = None,
                    for_runtime: bool = True) -> tuple[list, int]:
    """(the errors, number of JobSets checked); with for_runtime, jobs and runtime issues are errors."""
    v = verdict(docs, crd, gates)
    return v.errors(for_runtime), v.count


def check(docs: list, crd: Crd | None = None, gates: FeatureGates | None = None) -> int:
    """The generators' self-check: raise ConfigError listing every issue of every
    verdict (generated manifests must satisfy the runtime's too); return the count."""
    issues, count = document_issues(docs, crd, gates, for_runtime=True)
    if issues:
        raise ConfigError(f"invalid manifest ({len(issues)} problem{'s' if len(issues) > 1 else ''}):\n"
                          + format_issues(issues))
    return count
