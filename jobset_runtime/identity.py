"""Who am I, who is everyone: pod metadata in, Identity and Topology out.

Pure functions over plain values; reading the downward-API files, env and
/etc/hosts happens in `podinfo`.  Everything here follows what JobSet v0.12
writes on child pods (REFERENCE.md: labelAndAnnotateObject in
kubernetes-sigs/jobset pkg/controllers/jobset_controller.go) and what the
Job controller adds in Indexed mode.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from collections.abc import Mapping  # not typing: a costly import on every start

from . import contract
from .errors import ConfigError

SCOPES = tuple(s for s in contract.WAIT_SCOPES if s != "none")

_SHAPE = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?):(\d+)x(\d+)$")
_TOPOLOGY_FORM = "name:REPLICASxPODS,... in spec order, e.g. launcher:1x1,worker:2x4"


def hostname_of(jobset: str, replicated_job: str, job_index: int, pod_index: int) -> str:
    """A child pod's hostname: `<js>-<rjob>-<jobIdx>-<podIdx>` (JobSet's genJobName + Indexed pod hostname)."""
    return f"{jobset}-{replicated_job}-{job_index}-{pod_index}"


@dataclass(frozen=True)
class ReplicatedJobShape:
    name: str
    replicas: int
    pods: int  # parallelism = completions of each Job

    def __str__(self) -> str:
        return f"{self.name}:{self.replicas}x{self.pods}"


@dataclass(frozen=True)
class Topology:
    """The shapes of all replicated jobs, in spec order: enough to number every pod.

    Global rank orders pods by replicated job (spec order), then job index, then
    completion index, so each Job's pods are contiguous and rank 0 is pod 0 of
    job 0 of the first replicated job.
    """

    jobs: tuple[ReplicatedJobShape, ...]

    @classmethod
    def parse(cls, text: str) -> "Topology":
        jobs = []
        for part in text.split(","):
            m = _SHAPE.match(part.strip())
            if not m:
                raise ConfigError(
                    f"{contract.TOPOLOGY_ENV}={text!r}: cannot read {part.strip()!r}; "
                    f"expected {_TOPOLOGY_FORM}"
                )
            jobs.append(ReplicatedJobShape(m.group(1), int(m.group(3)), int(m.group(4))))
        names = [j.name for j in jobs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"{contract.TOPOLOGY_ENV}={text!r}: replicated job {dupes[0]!r} appears twice")
        if any(j.pods == 0 for j in jobs):
            raise ConfigError(f"{contract.TOPOLOGY_ENV}={text!r}: every replicated job needs at least 1 pod per job")
        return cls(tuple(jobs))

    def __str__(self) -> str:
        return ",".join(str(j) for j in self.jobs)

    def shape(self, name: str) -> ReplicatedJobShape:
        for j in self.jobs:
            if j.name == name:
                return j
        raise KeyError(name)

    @property
    def world_size(self) -> int:
        return sum(j.replicas * j.pods for j in self.jobs)

    @property
    def global_replicas(self) -> int:
        return sum(j.replicas for j in self.jobs)

    def first_rank(self, name: str) -> int:
        offset = 0
        for j in self.jobs:
            if j.name == name:
                return offset
            offset += j.replicas * j.pods
        raise KeyError(name)

    def job_global_index(self, name: str, job_index: int) -> int:
        offset = 0
        for j in self.jobs:
            if j.name == name:
                return offset + job_index
            offset += j.replicas
        raise KeyError(name)

    def rank(self, name: str, job_index: int, pod_index: int) -> int:
        return self.first_rank(name) + job_index * self.shape(name).pods + pod_index

    def locate(self, rank: int) -> tuple[str, int, int]:
        """Inverse of `rank`: (replicated job, job index, pod index)."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside 0..{self.world_size - 1}")
        for j in self.jobs:
            size = j.replicas * j.pods
            if rank < size:
                return j.name, rank // j.pods, rank % j.pods
            rank -= size
        raise AssertionError("unreachable")

    def hostnames(self, jobset: str) -> list[str]:
        """Every pod's hostname, in rank order."""
        return [
            hostname_of(jobset, j.name, ji, pi)
            for j in self.jobs
            for ji in range(j.replicas)
            for pi in range(j.pods)
        ]


@dataclass(frozen=True)
class PodMetadata:
    """What Kubernetes hands a pod, before interpretation."""

    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    hosts: str = ""  # text of /etc/hosts
    name: str | None = None  # downward-API `name` file (metadata.name)
    namespace: str | None = None  # downward-API `namespace` file
    service_account_namespace: str | None = None  # the service-account mount's `namespace` file
    resolv_conf: str = ""  # text of /etc/resolv.conf


@dataclass(frozen=True)
class Identity:
    """This pod, and what it can know of the whole JobSet.

    Values a pod cannot know without `JOBSET_RUNTIME_TOPOLOGY` (rank, world size,
    hosts per slice, peers) are None in the fields; the properties that need them
    raise a ConfigError saying what to add.
    """

    jobset_name: str
    replicated_job: str
    job_index: int
    pod_index: int
    replicated_job_replicas: int | None
    job_global_index: int | None
    global_replicas: int | None
    restart_attempt: int
    namespace: str | None
    subdomain: str
    cluster_domain: str
    coordinator_host: str | None  # hostname of the coordinator pod
    topology: Topology | None
    jobset_uid: str | None = None
    pod_name: str | None = None
    pod_ip: str | None = None
    namespace_source: str | None = None  # where `namespace` came from, for `env` and error messages

    # --- this pod ---------------------------------------------------------
    @property
    def hostname(self) -> str:
        return hostname_of(self.jobset_name, self.replicated_job, self.job_index, self.pod_index)

    def fqdn(self, host: str | None = None) -> str:
        """`<host>.<subdomain>.<ns>.svc.<domain>`: absolute, so no search path is needed."""
        if self.namespace is None:
            raise ConfigError(
                "the pod's namespace is unknown: none of the downward-API `namespace` file in "
                f"{contract.PODINFO_DIR}, {contract.IDENTITY_ENV['namespace']}, {contract.POD_NAMESPACE_ENV}, "
                f"{contract.SERVICE_ACCOUNT_NAMESPACE_FILE} or a `<ns>.svc.<domain>` search domain in "
                f"{contract.RESOLV_CONF} gives it: set {contract.IDENTITY_ENV['namespace']} from fieldRef "
                "metadata.namespace, or mount the downward-API file as generated manifests do"
            )
        return f"{host or self.hostname}.{self.subdomain}.{self.namespace}.svc.{self.cluster_domain}"

    # --- numbering ---------------------------------------------------------
    def require_topology(self, what: str) -> Topology:
        if self.topology is None:
            raise ConfigError(
                f"{what} needs the shape of every replicated job, which a pod cannot see: set "
                f"{contract.TOPOLOGY_ENV} ({_TOPOLOGY_FORM}) in the pod template; the manifests "
                "`jobset-runtime manifest` generates set it for you"
            )
        return self.topology

    @property
    def rank(self) -> int:
        return self.require_topology("the global rank").rank(self.replicated_job, self.job_index, self.pod_index)

    @property
    def world_size(self) -> int:
        return self.require_topology("the world size").world_size

    @property
    def pods_per_job(self) -> int:
        return self.require_topology("the number of pods per job").shape(self.replicated_job).pods

    # --- multislice view: one Job of the replicated job is one slice --------
    @property
    def slice_id(self) -> int:
        return self.job_index

    @property
    def num_slices(self) -> int:
        if self.replicated_job_replicas is None:
            raise ConfigError(
                f"the number of slices is unknown: the pod lacks {contract.REPLICATED_JOB_REPLICAS_KEY}; "
                f"mount the downward-API labels file in {contract.PODINFO_DIR}"
            )
        return self.replicated_job_replicas

    @property
    def hosts_per_slice(self) -> int:
        return self.pods_per_job

    @property
    def worker_id(self) -> int:
        return self.pod_index

    # --- peers ---------------------------------------------------------------
    @property
    def coordinator(self) -> str:
        if self.coordinator_host is None:
            raise ConfigError(
                "the coordinator is unknown: set spec.coordinator in the JobSet (JobSet then annotates "
                f"{contract.COORDINATOR_KEY}), or set {contract.TOPOLOGY_ENV} ({_TOPOLOGY_FORM})"
            )
        return self.coordinator_host

    @property
    def is_coordinator(self) -> bool:
        return self.coordinator == self.hostname

    @property
    def slice_coordinator(self) -> str:
        """Pod 0 of job 0 of this pod's replicated job: libtpu's and JAX's TPU coordinator,
        which must be a host of the slices even when another replicated job (a driver) is first."""
        return hostname_of(self.jobset_name, self.replicated_job, 0, 0)

    def slice_hosts(self) -> list[str]:
        """Hostnames of the pods of this pod's Job, in worker-id order."""
        return [
            hostname_of(self.jobset_name, self.replicated_job, self.job_index, p)
            for p in range(self.pods_per_job)
        ]

    def all_hosts(self) -> list[str]:
        return self.require_topology("waiting for every pod").hostnames(self.jobset_name)

    def scope_hosts(self, scope: str) -> list[str]:
        """The hostnames a scope waits for; DNS load stays linear in pods for the default scopes."""
        if scope == "coordinator":
            return [self.coordinator]
        if scope == "slice":
            hosts = self.slice_hosts()
            return hosts if self.coordinator in hosts else [self.coordinator, *hosts]
        if scope == "all":
            return self.all_hosts()
        raise ConfigError(f"unknown scope {scope!r}: use one of {', '.join(SCOPES)}")

    def to_dict(self) -> dict:
        """Everything known, None where a value needs what the pod lacks."""

        def known(fn):
            try:
                return fn()
            except ConfigError:
                return None

        return {
            "rank": known(lambda: self.rank),
            "world_size": known(lambda: self.world_size),
            "jobset_name": self.jobset_name,
            "jobset_uid": self.jobset_uid,
            "namespace": self.namespace,
            "namespace_source": self.namespace_source,
            "pod_name": self.pod_name,
            "replicated_job": self.replicated_job,
            "replicated_job_replicas": self.replicated_job_replicas,
            "job_index": self.job_index,
            "job_global_index": self.job_global_index,
            "global_replicas": self.global_replicas,
            "pod_index": self.pod_index,
            "slice_id": self.slice_id,
            "num_slices": self.replicated_job_replicas,
            "hosts_per_slice": known(lambda: self.hosts_per_slice),
            "worker_id": self.worker_id,
            "hostname": self.hostname,
            "fqdn": known(self.fqdn),
            "subdomain": self.subdomain,
            "cluster_domain": self.cluster_domain,
            "coordinator": self.coordinator_host,
            "coordinator_fqdn": known(lambda: self.fqdn(self.coordinator)),
            "restart_attempt": self.restart_attempt,
            "pod_ip": self.pod_ip,
            "topology": str(self.topology) if self.topology else None,
        }


# --- derivation -------------------------------------------------------------------

class _Source:
    """Looks a field up in annotations, then labels, then env; names where it came from."""

    def __init__(self, meta: PodMetadata):
        self.meta = meta

    def get(self, fieldname: str) -> tuple[str | None, str]:
        key = contract.IDENTITY_KEYS.get(fieldname)
        if key is not None:
            ann, lab = self.meta.annotations.get(key), self.meta.labels.get(key)
            if ann is not None and lab is not None and ann != lab:
                raise ConfigError(
                    f"label and annotation {key} disagree ({lab!r} vs {ann!r}); JobSet sets both to the "
                    "same value, so the pod template or the podinfo files were edited by hand: fix them"
                )
            if ann is not None:
                return ann, f"annotation {key}"
            if lab is not None:
                return lab, f"label {key}"
        env = contract.IDENTITY_ENV.get(fieldname)
        if env and env in self.meta.env:
            return self.meta.env[env], f"env {env}"
        if fieldname == "pod_index" and contract.JOB_COMPLETION_INDEX_ENV in self.meta.env:
            return self.meta.env[contract.JOB_COMPLETION_INDEX_ENV], f"env {contract.JOB_COMPLETION_INDEX_ENV}"
        return None, ""

    def text(self, fieldname: str, required: bool = False) -> str | None:
        value, _ = self.get(fieldname)
        if required and not value:
            raise ConfigError(_missing(fieldname))
        return value or None

    def number(self, fieldname: str, required: bool = False) -> int | None:
        value, origin = self.get(fieldname)
        if value is None or value == "":
            if required:
                raise ConfigError(_missing(fieldname))
            return None
        if not (value.isascii() and value.isdecimal()):
            raise ConfigError(f"{origin}={value!r} is not a non-negative integer; JobSet writes decimal strings")
        return int(value)


def source_of(meta: PodMetadata, fieldname: str) -> tuple[str | None, str]:
    """(value, where it came from) for one identity field, as `derive` looks it up."""
    return _Source(meta).get(fieldname)


def _missing(fieldname: str) -> str:
    key = contract.IDENTITY_KEYS.get(fieldname, "")
    env = contract.IDENTITY_ENV.get(fieldname, "")
    via = f"the {key} label/annotation or " if key else ""
    return (
        f"no {fieldname.replace('_', ' ')} for this pod: expected {via}env {env}. Mount the downward-API "
        f"volume ({contract.PODINFO_LABELS} and {contract.PODINFO_ANNOTATIONS} files) at "
        f"{contract.PODINFO_DIR} or the dir named by {contract.PODINFO_ENV}, as generated manifests do"
    )


def _hosts_entry(hosts: str, hostname: str) -> tuple[str, list[str]] | None:
    """The kubelet's /etc/hosts line for this pod: `<ip> <host>.<subdomain>.<ns>.svc.<domain> <host>`.

    kubernetes pkg/kubelet/kubelet_pods.go (managedHostsFileContent) writes it when the pod has
    a subdomain, which every JobSet pod does.
    """
    prefix = hostname + "."
    for line in hosts.splitlines():
        fields = line.split("#", 1)[0].split()
        for name in fields[1:]:
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix):].rstrip(".").split(".")
            if len(parts) >= 4 and parts[2] == "svc":
                return fields[0], parts
    return None


def fqdn_from_hosts(hosts: str, hostname: str) -> tuple[str, str, str] | None:
    """(subdomain, namespace, cluster domain) from the kubelet's /etc/hosts line."""
    entry = _hosts_entry(hosts, hostname)
    if entry is None:
        return None
    parts = entry[1]
    return parts[0], parts[1], ".".join(parts[3:])


def _split_hostname(host: str, jobset: str) -> tuple[str, int, int] | None:
    """`<js>-<rjob>-<j>-<p>` → (rjob, j, p); replicated job names may hold dashes."""
    if not host.startswith(jobset + "-"):
        return None
    parts = host[len(jobset) + 1:].rsplit("-", 2)
    if len(parts) != 3 or not all(p.isascii() and p.isdecimal() for p in parts[1:]):
        return None
    return parts[0], int(parts[1]), int(parts[2])


def namespace_from_search(resolv_conf: str) -> tuple[str, str] | None:
    """(namespace, cluster domain) from the first `<ns>.svc.<domain>` of resolv.conf's search list.

    The kubelet writes `search <ns>.svc.<domain> svc.<domain> <domain>` for ClusterFirst
    pods (kubernetes pkg/kubelet/network/dns/dns.go, generateSearchesForDNSClusterFirst).
    """
    for line in resolv_conf.splitlines():
        words = line.split()
        if words[:1] != ["search"]:
            continue
        for domain in words[1:]:
            ns, sep, rest = domain.rstrip(".").partition(".svc.")
            if sep and ns and rest and "." not in ns:
                return ns, rest
    return None


def choose_namespace(meta: PodMetadata, from_hosts: str | None, from_search: str | None) -> tuple[str | None, str | None]:
    """The pod's namespace and where it came from, most explicit source first."""
    candidates = (
        (meta.namespace, f"downward-API file {contract.PODINFO_NAMESPACE}"),
        (meta.env.get(contract.IDENTITY_ENV["namespace"]), f"env {contract.IDENTITY_ENV['namespace']}"),
        (meta.env.get(contract.POD_NAMESPACE_ENV), f"env {contract.POD_NAMESPACE_ENV}"),
        (meta.service_account_namespace, contract.SERVICE_ACCOUNT_NAMESPACE_FILE),
        (from_hosts, contract.HOSTS_FILE),
        (from_search, f"{contract.RESOLV_CONF} search list"),
    )
    for value, source in candidates:
        if value and value.strip():
            return value.strip(), source
    return None, None


def derive(meta: PodMetadata) -> Identity:
    """Interpret pod metadata; every inconsistency is a ConfigError naming the input and the fix."""
    src = _Source(meta)
    jobset = src.text("jobset_name", required=True)
    rjob = src.text("replicated_job", required=True)
    job_index = src.number("job_index")
    pod_index = src.number("pod_index")
    if job_index is None or pod_index is None:
        # Fall back on the pod's own hostname, which JobSet makes `<js>-<rjob>-<j>-<p>`.
        parsed = _split_hostname(meta.env.get(contract.HOSTNAME_ENV, ""), jobset)
        if parsed and parsed[0] == rjob:
            job_index = parsed[1] if job_index is None else job_index
            pod_index = parsed[2] if pod_index is None else pod_index
    if job_index is None:
        raise ConfigError(_missing("job_index"))
    if pod_index is None:
        raise ConfigError(
            _missing("pod_index") + f" (or {contract.JOB_COMPLETION_INDEX_ENV}, set for Indexed Jobs)"
        )
    replicas = src.number("replicated_job_replicas")
    global_index = src.number("job_global_index")
    global_replicas = src.number("global_replicas")

    host = hostname_of(jobset, rjob, job_index, pod_index)
    if len(host) > contract.DNS_LABEL_MAX:
        raise ConfigError(
            f"pod hostname {host!r} is {len(host)} characters, over the DNS label limit of "
            f"{contract.DNS_LABEL_MAX} (JobSet allows {contract.HOSTNAME_MAX}): shorten the JobSet or "
            "replicated job name"
        )
    if replicas is not None and job_index >= replicas:
        raise ConfigError(
            f"{contract.JOB_INDEX_KEY}={job_index} is out of range for "
            f"{contract.REPLICATED_JOB_REPLICAS_KEY}={replicas} (indices run 0..{replicas - 1})"
        )
    if global_index is not None and global_replicas is not None and global_index >= global_replicas:
        raise ConfigError(
            f"{contract.JOB_GLOBAL_INDEX_KEY}={global_index} is out of range for "
            f"{contract.GLOBAL_REPLICAS_KEY}={global_replicas}"
        )

    topology = None
    topo_text = meta.env.get(contract.TOPOLOGY_ENV, "").strip()
    if topo_text:
        topology = Topology.parse(topo_text)
        _check_topology(topology, topo_text, rjob, job_index, pod_index, replicas, global_index, global_replicas)
        # What the labels left out, the topology answers.
        replicas = topology.shape(rjob).replicas
        global_index = topology.job_global_index(rjob, job_index)
        global_replicas = topology.global_replicas

    # Subdomain and cluster domain: explicit env, then /etc/hosts (then resolv.conf's search list).
    from_hosts = fqdn_from_hosts(meta.hosts, host) or (None, None, None)
    from_search = namespace_from_search(meta.resolv_conf) or (None, None)
    namespace, namespace_source = choose_namespace(meta, from_hosts[1], from_search[0])
    subdomain = meta.env.get(contract.IDENTITY_ENV["subdomain"]) or from_hosts[0]
    cluster_domain = (meta.env.get(contract.CLUSTER_DOMAIN_ENV) or from_hosts[2] or from_search[1]
                      or contract.DEFAULT_CLUSTER_DOMAIN)

    coordinator_host = None
    coord = src.text("coordinator")
    if coord:
        coordinator_host, _, coord_subdomain = coord.partition(".")
        parsed = _split_hostname(coordinator_host, jobset)
        if parsed is None:
            raise ConfigError(
                f"{contract.COORDINATOR_KEY}={coord!r} is not `<jobset>-<replicatedJob>-<jobIndex>-<podIndex>"
                f".<subdomain>` for JobSet {jobset!r}"
            )
        if topology is not None:
            crjob, cj, cp = parsed
            try:
                shape = topology.shape(crjob)
            except KeyError:
                shape = None
            if shape is None or cj >= shape.replicas or cp >= shape.pods:
                raise ConfigError(
                    f"{contract.COORDINATOR_KEY}={coord!r} names a pod outside "
                    f"{contract.TOPOLOGY_ENV}={topo_text!r}: fix spec.coordinator or the topology"
                )
        subdomain = subdomain or coord_subdomain or None
    elif topology is not None and topology.world_size:
        # Pod 0 of job 0 of the first replicated job that has any pods: rank 0.
        coordinator_host = hostname_of(jobset, *topology.locate(0))
    elif global_index is not None and global_index == job_index:
        # No earlier replicated job has any Job, so this one is first in spec order.
        coordinator_host = hostname_of(jobset, rjob, 0, 0)

    return Identity(
        jobset_name=jobset,
        replicated_job=rjob,
        job_index=job_index,
        pod_index=pod_index,
        replicated_job_replicas=replicas,
        job_global_index=global_index,
        global_replicas=global_replicas,
        restart_attempt=src.number("restart_attempt") or 0,
        namespace=namespace,
        # spec.network.subdomain defaults to the JobSet name (JobSet webhook).
        subdomain=subdomain or jobset,
        cluster_domain=cluster_domain,
        coordinator_host=coordinator_host,
        topology=topology,
        jobset_uid=src.text("jobset_uid"),
        pod_name=meta.env.get(contract.IDENTITY_ENV["pod_name"]) or meta.name,
        pod_ip=meta.env.get(contract.POD_IP_ENV) or (_hosts_entry(meta.hosts, host) or (None,))[0],
        namespace_source=namespace_source,
    )


def _check_topology(topology, text, rjob, job_index, pod_index, replicas, global_index, global_replicas):
    where = f"{contract.TOPOLOGY_ENV}={text!r}"
    try:
        shape = topology.shape(rjob)
    except KeyError:
        raise ConfigError(
            f"{where} has no replicated job {rjob!r} (this pod's {contract.REPLICATED_JOB_NAME_KEY}): "
            "regenerate the manifest or fix the variable"
        ) from None
    problems = []
    if replicas is not None and shape.replicas != replicas:
        problems.append(f"{rjob} has {shape.replicas} replicas there but {contract.REPLICATED_JOB_REPLICAS_KEY}={replicas}")
    if global_replicas is not None and topology.global_replicas != global_replicas:
        problems.append(f"its replicas sum to {topology.global_replicas} but {contract.GLOBAL_REPLICAS_KEY}={global_replicas}")
    if global_index is not None and topology.job_global_index(rjob, job_index) != global_index:
        problems.append(
            f"it puts job {rjob}-{job_index} at global index {topology.job_global_index(rjob, job_index)} but "
            f"{contract.JOB_GLOBAL_INDEX_KEY}={global_index} (replicated jobs out of spec order?)"
        )
    if job_index >= shape.replicas:
        problems.append(f"job index {job_index} is outside {shape.replicas} replicas")
    if pod_index >= shape.pods:
        problems.append(f"pod index {pod_index} is outside {shape.pods} pods per job")
    if problems:
        raise ConfigError(f"{where} disagrees with the pod's labels: " + "; ".join(problems) + ". Regenerate it from the JobSet spec")
