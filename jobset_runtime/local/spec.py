"""Reading a JobSet file: the JobSet, the objects beside it, and JobSet's defaults.

Defaults and checks are the ones `manifest validate` applies (the API server's:
jobset_runtime/manifests/defaults.py and validate.py), then the Job API's own
(kubernetes/kubernetes pkg/apis/batch/v1/defaults.go); a field the runner does
not implement is refused, by name (support.py).
"""

from __future__ import annotations


from .. import contract
from ..errors import ConfigError
from .support import review


def load_documents(text: str, source: str = "<input>") -> list:
    import yaml  # lazy: only the local runner reads YAML

    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}")
    for d in docs:
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: every YAML document must be a Kubernetes object (a mapping)")
    return docs


def split_documents(docs: list, source: str = "<input>"):
    """(the one JobSet, {(kind, name): object} of the Secrets and ConfigMaps beside it)."""
    jobsets = [d for d in docs if d.get("kind") == contract.JOBSET_KIND]
    if len(jobsets) != 1:
        raise ConfigError(f"{source}: expected exactly one `kind: JobSet` document, found {len(jobsets)}")
    objects = {}
    for d in docs:
        kind = d.get("kind")
        if kind in ("Secret", "ConfigMap"):
            objects[(kind, (d.get("metadata") or {}).get("name", ""))] = d
    return jobsets[0], objects


def read_file(path: str):
    """split_documents() of the YAML file at `path`; a ConfigError naming it when it cannot be read."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    return split_documents(load_documents(text, path), path)


def apply_defaults(jobset: dict) -> dict:
    """A deep copy of `jobset` as the cluster would run it: checked and defaulted.

    The JobSet must get the API server's verdict and satisfy the child Jobs' and the
    runtime's (jobset_runtime.manifests.validate, with the same defaults:
    manifests/defaults.py), and use only what the runner implements (support.py).
    Each Job template then gets the Job API's defaults, and each pod its grace period
    (kubernetes pkg/apis/core/v1/defaults.go: terminationGracePeriodSeconds 30)."""
    from ..manifests import defaults, validate
    from ..manifests.issues import format_issues

    meta = jobset.get("metadata") if isinstance(jobset.get("metadata"), dict) else {}
    what = f"JobSet {meta.get('name') or '(no name)'}"
    if not meta.get("name"):
        raise ConfigError(f"{what}: metadata.name is missing; give the JobSet a name (the runner cannot "
                          "generate one from generateName)")
    verdict = validate.jobset_verdict(jobset)
    for issues, who in ((verdict.api, "the API server would reject it"),
                        (verdict.jobs, "the Job API would reject its Jobs"),
                        (verdict.runtime, "jobset-runtime's runner needs more")):
        if issues:
            raise ConfigError(f"{what}: {who} ({len(issues)} problem{'s' if len(issues) > 1 else ''}):\n"
                              + format_issues(issues))
    js = defaults.apply(jobset)
    refused, _ = review(js)
    if refused:
        raise ConfigError(f"{what}: the local runner does not implement "
                          + ("these fields" if len(refused) > 1 else "this field") + ":\n"
                          + "\n".join(f"  {field}" for field in refused)
                          + "\nremove them to run it here (docs/local-runner.md lists what is implemented)")
    for rj in js["spec"]["replicatedJobs"]:
        job = rj["template"]["spec"] = defaults.job_defaults(rj["template"]["spec"])
        pod = job["template"]["spec"]
        pod.setdefault("terminationGracePeriodSeconds", 30)
        if not pod.get("containers"):
            raise ConfigError(f"replicatedJob {rj['name']}: the pod template has no containers")
    return js


def notices(js: dict) -> list:
    """The fields of a defaulted JobSet that have no effect on one machine (JSON paths)."""
    return review(js)[1]
