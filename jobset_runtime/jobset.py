"""JobSet semantics as plain functions over a JobSet dict (as parsed from YAML).

What the JobSet controller and the Job controller give each child pod: its
names, hostname, labels, annotations, env and downward-API files.  The manifest
tests use it to check that generated pods carry what the runtime reads, and the
local runner uses it to start pods the way a cluster would.

Reproduces (facts, not code):
- kubernetes-sigs/jobset pkg/controllers/jobset_controller.go: labelAndAnnotateObject,
  globalJobIndex, globalReplicas, jobHashKey, coordinatorEndpoint, GetSubdomain;
- kubernetes-sigs/jobset pkg/util/placement: GenJobName / GenPodName;
- kubernetes-sigs/jobset pkg/webhooks/jobset_webhook.go: Default (the defaults below);
- kubernetes/kubernetes pkg/controller/job/indexed_job_utils.go: the completion
  index annotation/label/env and the `<job>-<index>` hostname of Indexed pods.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from . import contract
from .identity import ReplicatedJobShape, Topology, hostname_of


# --- names ----------------------------------------------------------------------

def job_name(jobset_name: str, rjob_name: str, job_index: int) -> str:
    """`<js>-<rjob>-<jobIdx>`, the child Job's name."""
    return f"{jobset_name}-{rjob_name}-{job_index}"


def pod_hostname(jobset_name: str, rjob_name: str, job_index: int, pod_index: int) -> str:
    """`<js>-<rjob>-<jobIdx>-<podIdx>`: an Indexed pod's hostname is `<job>-<index>`."""
    return hostname_of(jobset_name, rjob_name, job_index, pod_index)


def job_key(namespace: str, name_of_job: str) -> str:
    """SHA1 hex of `<ns>/<jobName>` (jobHashKey)."""
    return hashlib.sha1(f"{namespace}/{name_of_job}".encode()).hexdigest()


def name(jobset: dict) -> str:
    return jobset["metadata"]["name"]


def namespace(jobset: dict) -> str:
    return jobset["metadata"].get("namespace") or "default"


def subdomain(jobset: dict) -> str:
    """spec.network.subdomain, else the JobSet name (GetSubdomain)."""
    net = jobset.get("spec", {}).get("network") or {}
    return net.get("subdomain") or name(jobset)


def replicated_jobs(jobset: dict) -> list[dict]:
    return jobset.get("spec", {}).get("replicatedJobs") or []


def replicas(rjob: dict) -> int:
    return int(rjob.get("replicas", 1))  # CRD default 1


def pods_per_job(rjob: dict) -> int:
    """Indexed pods per child Job: completions, else parallelism, else 1."""
    spec = rjob.get("template", {}).get("spec", {})
    value = spec.get("completions", spec.get("parallelism", 1))
    return int(value if value is not None else 1)


def group_name(rjob: dict) -> str:
    return rjob.get("groupName") or contract.DEFAULT_GROUP_NAME


def rjob_by_name(jobset: dict, rjob_name: str) -> dict:
    for rjob in replicated_jobs(jobset):
        if rjob.get("name") == rjob_name:
            return rjob
    raise KeyError(f"replicatedJob {rjob_name!r} is not in spec.replicatedJobs")


def global_replicas(jobset: dict) -> int:
    return sum(replicas(r) for r in replicated_jobs(jobset))


def job_global_index(jobset: dict, rjob_name: str, job_index: int) -> int:
    """Jobs are numbered across ReplicatedJobs in spec order (globalJobIndex)."""
    seen = 0
    for rjob in replicated_jobs(jobset):
        if rjob.get("name") == rjob_name:
            return seen + job_index
        seen += replicas(rjob)
    raise KeyError(f"replicatedJob {rjob_name!r} is not in spec.replicatedJobs")


def group_replicas(jobset: dict, group: str) -> int:
    return sum(replicas(r) for r in replicated_jobs(jobset) if group_name(r) == group)


def job_group_index(jobset: dict, rjob_name: str, job_index: int) -> int:
    """Like the global index, counting only ReplicatedJobs of the same group."""
    group = group_name(rjob_by_name(jobset, rjob_name))
    seen = 0
    for rjob in replicated_jobs(jobset):
        if group_name(rjob) != group:
            continue
        if rjob.get("name") == rjob_name:
            return seen + job_index
        seen += replicas(rjob)
    raise KeyError(rjob_name)


def coordinator_endpoint(jobset: dict) -> str | None:
    """`<js>-<rjob>-<jobIdx>-<podIdx>.<subdomain>` when spec.coordinator is set."""
    coord = jobset.get("spec", {}).get("coordinator")
    if not coord:
        return None
    host = pod_hostname(name(jobset), coord["replicatedJob"],
                        int(coord.get("jobIndex", 0)), int(coord.get("podIndex", 0)))
    return f"{host}.{subdomain(jobset)}"


def topology(jobset: dict) -> Topology:
    """The shapes the JOBSET_RUNTIME_TOPOLOGY value spells (`str()` of it), in spec order."""
    return Topology(tuple(ReplicatedJobShape(r["name"], replicas(r), pods_per_job(r))
                          for r in replicated_jobs(jobset)))


@dataclass(frozen=True)
class PodRef:
    """One pod of a JobSet, in spec order."""

    replicated_job: str
    job_index: int
    pod_index: int


def all_pods(jobset: dict):
    """Every pod the JobSet creates: ReplicatedJobs in spec order, then jobs, then indices."""
    for rjob in replicated_jobs(jobset):
        for j in range(replicas(rjob)):
            for p in range(pods_per_job(rjob)):
                yield PodRef(rjob["name"], j, p)


# --- pod metadata -----------------------------------------------------------------

def child_pod_metadata(jobset: dict, rjob_name: str, job_index: int, pod_index: int,
                       restart_attempt: int = 0, uid: str = "") -> tuple[dict, dict]:
    """(labels, annotations) of a child pod, as JobSet + the Job controller set them.

    Template labels/annotations first, then every JobSet key as both a label and an
    annotation (labelAndAnnotateObject), the exclusive-topology annotation when the
    JobSet or the ReplicatedJob template carries it, and the completion index.
    """
    rjob = rjob_by_name(jobset, rjob_name)
    js_name, ns = name(jobset), namespace(jobset)
    pod_template = rjob.get("template", {}).get("spec", {}).get("template", {})
    tmeta = pod_template.get("metadata") or {}
    labels = dict(tmeta.get("labels") or {})
    annotations = dict(tmeta.get("annotations") or {})

    group = group_name(rjob)
    keys = {
        contract.JOBSET_NAME_KEY: js_name,
        contract.REPLICATED_JOB_NAME_KEY: rjob_name,
        contract.RESTART_ATTEMPT_KEY: str(restart_attempt),
        contract.REPLICATED_JOB_REPLICAS_KEY: str(replicas(rjob)),
        contract.GLOBAL_REPLICAS_KEY: str(global_replicas(jobset)),
        contract.JOB_INDEX_KEY: str(job_index),
        contract.JOB_KEY: job_key(ns, job_name(js_name, rjob_name, job_index)),
        contract.JOB_GLOBAL_INDEX_KEY: str(job_global_index(jobset, rjob_name, job_index)),
        contract.GROUP_NAME_KEY: group,
        contract.GROUP_REPLICAS_KEY: str(group_replicas(jobset, group)),
        contract.JOB_GROUP_INDEX_KEY: str(job_group_index(jobset, rjob_name, job_index)),
        # The Job controller (Indexed mode): annotation and, since Kubernetes 1.28, label.
        contract.JOB_COMPLETION_INDEX_KEY: str(pod_index),
    }
    if uid:
        keys[contract.JOBSET_UID_KEY] = uid
    coord = coordinator_endpoint(jobset)
    if coord is not None:
        keys[contract.COORDINATOR_KEY] = coord
    labels.update(keys)
    annotations.update(keys)

    # Exclusive placement: annotation only, JobSet level then ReplicatedJob template level.
    for source in (jobset.get("metadata", {}).get("annotations") or {},
                   rjob.get("template", {}).get("metadata", {}).get("annotations") or {}):
        if contract.EXCLUSIVE_TOPOLOGY_KEY in source:
            annotations[contract.EXCLUSIVE_TOPOLOGY_KEY] = source[contract.EXCLUSIVE_TOPOLOGY_KEY]
            if contract.NODE_SELECTOR_STRATEGY_KEY in source:
                annotations[contract.NODE_SELECTOR_STRATEGY_KEY] = source[contract.NODE_SELECTOR_STRATEGY_KEY]
    return labels, annotations


def pod_name(jobset: dict, rjob_name: str, job_index: int, pod_index: int, suffix: str = "x0000") -> str:
    """The pod's name: hostname plus a 5-character random suffix from the Job controller."""
    return f"{pod_hostname(name(jobset), rjob_name, job_index, pod_index)}-{suffix}"
