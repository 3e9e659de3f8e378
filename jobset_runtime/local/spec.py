"""Reading a JobSet file: the JobSet, the objects beside it, and JobSet's defaults.

Defaults are the ones JobSet's mutating webhook applies on create
(kubernetes-sigs/jobset pkg/webhooks/jobset_webhook.go, Default) and the Job
API's own (kubernetes/kubernetes pkg/apis/batch/v1/defaults.go).
"""

from __future__ import annotations

import copy

from .. import contract
from ..errors import ConfigError


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


def apply_defaults(jobset: dict) -> dict:
    """A deep copy of `jobset` with the webhook's and the Job API's defaults filled in."""
    js = copy.deepcopy(jobset)
    meta = js.setdefault("metadata", {})
    if not meta.get("name"):
        raise ConfigError("JobSet metadata.name is missing; give the JobSet a name")
    meta.setdefault("namespace", "default")
    spec = js.setdefault("spec", {})
    rjobs = spec.get("replicatedJobs") or []
    if not rjobs:
        raise ConfigError(f"JobSet {meta['name']}: spec.replicatedJobs is empty; add at least one")
    # jobset_webhook.go Default: successPolicy All, startupPolicy AnyOrder,
    # completionMode Indexed, pod restartPolicy OnFailure, network
    # enableDNSHostnames and publishNotReadyAddresses true, rule names.
    spec.setdefault("successPolicy", {"operator": "All"})
    spec["successPolicy"].setdefault("operator", "All")
    spec.setdefault("startupPolicy", {"startupPolicyOrder": "AnyOrder"})
    net = spec.setdefault("network", {}) or {}
    spec["network"] = net
    net.setdefault("enableDNSHostnames", True)
    net.setdefault("publishNotReadyAddresses", True)
    fp = spec.get("failurePolicy")
    if fp is not None:
        fp.setdefault("maxRestarts", 0)
        fp.setdefault("restartStrategy", "Recreate")
        for i, rule in enumerate(fp.get("rules") or []):
            rule.setdefault("name", f"failurePolicyRule{i}")
    names = set()
    for rj in rjobs:
        if not rj.get("name"):
            raise ConfigError(f"JobSet {meta['name']}: a replicatedJob has no name")
        if rj["name"] in names:
            raise ConfigError(f"JobSet {meta['name']}: replicatedJob name {rj['name']!r} is used twice")
        names.add(rj["name"])
        rj.setdefault("replicas", 1)
        rj.setdefault("groupName", contract.DEFAULT_GROUP_NAME)
        job = rj.setdefault("template", {}).setdefault("spec", {})
        job.setdefault("completionMode", "Indexed")
        # pkg/apis/batch/v1/defaults.go: completions and parallelism default to 1
        # (to each other when one is set), backoffLimit to 6.
        if "completions" not in job and "parallelism" in job:
            job["completions"] = job["parallelism"]
        job.setdefault("completions", 1)
        job.setdefault("parallelism", job["completions"])
        job.setdefault("backoffLimit", 6)
        pod = job.setdefault("template", {}).setdefault("spec", {})
        pod.setdefault("restartPolicy", "OnFailure")
        pod.setdefault("terminationGracePeriodSeconds", 30)
        if not pod.get("containers"):
            raise ConfigError(f"replicatedJob {rj['name']}: the pod template has no containers")
        if job["completionMode"] != "Indexed":
            raise ConfigError(f"replicatedJob {rj['name']}: the local runner supports completionMode Indexed only "
                              "(the JobSet default); remove completionMode or set it to Indexed")
    validate(js)
    return js


def validate(js: dict) -> None:
    """The checks of jobset_webhook.go ValidateCreate that change what the runner does."""
    spec = js["spec"]
    names = [rj["name"] for rj in spec["replicatedJobs"]]
    if spec["replicatedJobs"][0].get("dependsOn"):
        raise ConfigError("dependsOn can't be set for the first replicatedJob (JobSet validation)")
    seen = []
    for rj in spec["replicatedJobs"]:
        for dep in rj.get("dependsOn") or []:
            if dep.get("name") not in seen:
                raise ConfigError(f"replicatedJob {rj['name']} cannot depend on replicatedJob {dep.get('name')}: "
                                  "it must name an earlier replicatedJob")
            if dep.get("status") not in ("Ready", "Complete"):
                raise ConfigError(f"replicatedJob {rj['name']}: dependsOn status must be Ready or Complete")
        seen.append(rj["name"])
    for name in spec["successPolicy"].get("targetReplicatedJobs") or []:
        if name not in names:
            raise ConfigError(f"successPolicy.targetReplicatedJobs: {name!r} does not appear in spec.replicatedJobs")
    for rule in (spec.get("failurePolicy") or {}).get("rules") or []:
        for name in rule.get("targetReplicatedJobs") or []:
            if name not in names:
                raise ConfigError(f"failurePolicy rule {rule['name']}: {name!r} does not appear in spec.replicatedJobs")
        if rule.get("action") not in ("FailJobSet", "RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts"):
            raise ConfigError(f"failurePolicy rule {rule['name']}: action must be FailJobSet, RestartJobSet or "
                              "RestartJobSetAndIgnoreMaxRestarts")
    coord = spec.get("coordinator")
    if coord is not None:
        rj = next((r for r in spec["replicatedJobs"] if r["name"] == coord.get("replicatedJob")), None)
        if rj is None:
            raise ConfigError(f"coordinator replicatedJob {coord.get('replicatedJob')} does not exist")
        if not 0 <= int(coord.get("jobIndex", 0)) < int(rj["replicas"]):
            raise ConfigError(f"coordinator job index {coord.get('jobIndex')} is invalid for replicatedJob {rj['name']}")
        if not 0 <= int(coord.get("podIndex", 0)) < int(rj["template"]["spec"]["completions"]):
            raise ConfigError(f"coordinator pod index {coord.get('podIndex')} is invalid for replicatedJob {rj['name']}")
    strategy = (spec.get("failurePolicy") or {}).get("restartStrategy", "Recreate")
    if strategy not in ("Recreate", "BlockingRecreate"):
        raise ConfigError(f"failurePolicy.restartStrategy {strategy!r} is not supported by the local runner; "
                          "use Recreate or BlockingRecreate")
