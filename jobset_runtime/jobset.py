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


@dataclass(frozen=True)
class PodMeta:
    """What the downward API can see of a pod."""

    name: str
    namespace: str
    labels: dict
    annotations: dict
    ip: str = ""         # status.podIP; empty until the pod has one, as in the API
    node_name: str = ""  # spec.nodeName


def field_ref(path: str, pod: PodMeta) -> str:
    """Resolve a downward-API fieldPath (`metadata.labels['k']`, `metadata.name`, ...)."""
    for prefix, source in (("metadata.labels['", pod.labels), ("metadata.annotations['", pod.annotations)):
        if path.startswith(prefix) and path.endswith("']"):
            # A missing key gives an empty value, as the kubelet does.
            return source.get(path[len(prefix):-2], "")
    simple = {"metadata.name": pod.name, "metadata.namespace": pod.namespace, "status.podIP": pod.ip,
              "status.podIPs": pod.ip, "spec.nodeName": pod.node_name}
    if path in simple:
        return simple[path]
    raise ValueError(f"unsupported fieldPath {path!r}")


_GO_LETTER_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\v": "\\v"}


def go_quote(value: str) -> str:
    """Go's strconv.Quote for the values the kubelet writes into labels/annotations files."""
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch in _GO_LETTER_ESCAPES:
            out.append(_GO_LETTER_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def format_map_file(items: dict) -> str:
    """A downward-API `labels`/`annotations` file: `key="value"` lines sorted by key."""
    return "".join(f"{k}={go_quote(v)}\n" for k, v in sorted(items.items()))


def downward_api_files(volume: dict, pod: PodMeta) -> dict[str, str]:
    """{relative path: content} of a downwardAPI volume for this pod."""
    files = {}
    for item in volume.get("downwardAPI", {}).get("items", []):
        path = item["fieldRef"]["fieldPath"]
        if path == "metadata.labels":
            files[item["path"]] = format_map_file(pod.labels)
        elif path == "metadata.annotations":
            files[item["path"]] = format_map_file(pod.annotations)
        else:
            files[item["path"]] = field_ref(path, pod)
    return files


def container_env(container: dict, pod: PodMeta, pod_index: int) -> dict[str, str]:
    """The env a container starts with: JOB_COMPLETION_INDEX (Job controller), then its
    own entries in order, fieldRefs resolved and `$(VAR)` references expanded."""
    env = {contract.JOB_COMPLETION_INDEX_ENV: str(pod_index)}
    for entry in container.get("env") or []:
        if "value" in entry:
            env[entry["name"]] = _expand(entry["value"], env)
        elif "valueFrom" in entry and "fieldRef" in entry["valueFrom"]:
            env[entry["name"]] = field_ref(entry["valueFrom"]["fieldRef"]["fieldPath"], pod)
        else:
            env[entry["name"]] = ""
    return env


def _expand(value: str, env: dict) -> str:
    """Kubernetes `$(VAR)` expansion; `$$` escapes, unknown references stay as written."""
    out, i = [], 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
        elif value.startswith("$(", i) and ")" in value[i:]:
            end = value.index(")", i)
            ref = value[i + 2:end]
            out.append(env.get(ref, value[i:end + 1]))
            i = end + 1
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def etc_hosts(pod_ip: str, hostname: str, pod_subdomain: str | None, pod_namespace: str,
              cluster_domain: str = contract.DEFAULT_CLUSTER_DOMAIN) -> str:
    """The kubelet-managed /etc/hosts of a pod with a hostname (and subdomain):
    `<ip> <host>.<subdomain>.<ns>.svc.<domain> <host>` (kubernetes pkg/kubelet/kubelet_pods.go,
    managedHostsFileContent)."""
    lines = ["# Kubernetes-managed hosts file.", "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if pod_subdomain:
        lines.append(f"{pod_ip}\t{hostname}.{pod_subdomain}.{pod_namespace}.svc.{cluster_domain}\t{hostname}")
    else:
        lines.append(f"{pod_ip}\t{hostname}")
    return "\n".join(lines) + "\n"
