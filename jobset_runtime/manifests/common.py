"""Shared building blocks: the options every kind takes, the pod and the JobSet.

Every pod gets exactly what the runtime reads (see contract.py): the downward-API
volume with the JobSet keys, the topology env var, the command wrapped in
`jobset-run`, and a failure policy keyed on the runtime's exit codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import contract
from .. import jobset as js
from ..errors import ConfigError

CONTAINER = "main"
RUNNER = "jobset-run"
WAIT_CHOICES = contract.WAIT_SCOPES
# Names of the JobSet failurePolicy rule and the podFailurePolicy it answers.
CONFIG_RULE = "ConfigurationError"


@dataclass
class Common:
    """Options shared by every kind (the CLI's common flags)."""

    name: str
    image: str
    command: list
    namespace: str = "default"
    queue: str | None = None
    max_restarts: int = 3
    ttl: int | None = None
    subdomain: str | None = None
    priority_class: str | None = None
    cpu: str | None = None
    memory: str | None = None
    node_selector: dict = field(default_factory=dict)
    tolerations: list = field(default_factory=list)
    env: dict = field(default_factory=dict)
    wait: str | None = None          # None: the kind's default
    peer_timeout: int | None = None  # jobset-run --timeout
    image_pull_policy: str | None = None
    fail_fast: bool = True            # the group channel between the pods' wrappers
    in_place_restarts: int = 0        # jobset-run --restarts
    group_token: str | None = None    # None: a fresh random token
    network_policy: bool = False      # a NetworkPolicy: ingress to the pods only from the JobSet's own pods

    def check(self):
        if not self.command:
            raise ConfigError("no container command: put it after `--`, e.g. `-- python train.py`")
        if not self.image:
            raise ConfigError("no image: pass --image REGISTRY/IMAGE:TAG")
        if self.max_restarts < 0:
            raise ConfigError(f"--max-restarts {self.max_restarts}: must be 0 or more")
        if self.ttl is not None and self.ttl < 0:
            raise ConfigError(f"--ttl {self.ttl}: must be 0 or more seconds")
        if self.wait is not None and self.wait not in WAIT_CHOICES:
            raise ConfigError(f"--wait {self.wait}: choose one of {', '.join(WAIT_CHOICES)}")
        if self.peer_timeout is not None and self.peer_timeout <= 0:
            raise ConfigError(f"--peer-timeout {self.peer_timeout}: must be a positive number of seconds")
        if self.in_place_restarts < 0:
            raise ConfigError(f"--in-place-restarts {self.in_place_restarts}: must be 0 or more")
        if self.in_place_restarts and not self.fail_fast:
            raise ConfigError("--in-place-restarts needs the group channel: drop --no-fail-fast")
        for key in self.env:
            if key.startswith(contract.ENV_PREFIX) or key == contract.JOB_COMPLETION_INDEX_ENV:
                raise ConfigError(f"--env {key}: this name is set by jobset-runtime itself; pick another")


def positive(value, flag):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{flag} {value!r}: must be a whole number of at least 1")
    return value


def runner_command(c: Common, default_wait: str, tail: list, extra: tuple = ()) -> list:
    """`jobset-run --wait W [--timeout S] [extra] -- tail...`."""
    cmd = [RUNNER, "--wait", c.wait or default_wait]
    if c.peer_timeout is not None:
        cmd += ["--timeout", str(c.peer_timeout)]
    if c.fail_fast:
        # Explicit: a missing token mount must stop the pod, not silently turn fail-fast off.
        cmd += ["--group", "on"]
    if c.in_place_restarts:
        cmd += ["--restarts", str(c.in_place_restarts)]
    return cmd + list(extra) + ["--"] + [str(a) for a in tail]


def podinfo_volume() -> dict:
    """The downwardAPI volume the runtime reads every JobSet key from."""
    items = [
        (contract.PODINFO_LABELS, "metadata.labels"),
        (contract.PODINFO_ANNOTATIONS, "metadata.annotations"),
        (contract.PODINFO_NAME, "metadata.name"),
        (contract.PODINFO_NAMESPACE, "metadata.namespace"),
    ]
    return {"name": contract.PODINFO_VOLUME,
            "downwardAPI": {"items": [{"path": p, "fieldRef": {"fieldPath": f}} for p, f in items]}}


def group_secret_name(jobset_name: str) -> str:
    return f"{jobset_name}-group"


def group_secrets(c: Common) -> list:
    """The Secret holding the group channel's token (none without fail-fast), made at build time."""
    if not c.fail_fast:
        return []
    import base64
    import secrets

    token = c.group_token if c.group_token is not None else secrets.token_hex(32)
    if len(token) < 16:
        raise ConfigError("the group token must be at least 16 characters")
    return [{
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": group_secret_name(c.name), "namespace": c.namespace},
        "type": "Opaque",
        "data": {contract.GROUP_TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }]


def resources(c: Common, limits: dict | None = None) -> dict:
    """Requests = limits for cpu/memory (Guaranteed QoS); accelerators as limits."""
    out = {}
    base = {k: v for k, v in (("cpu", c.cpu), ("memory", c.memory)) if v}
    lim = dict(base)
    lim.update(limits or {})
    if base:
        out["requests"] = dict(base)
    if lim:
        out["limits"] = lim
    return out


def container(c: Common, command: list, topology: str, *, name: str = CONTAINER, env: dict | None = None,
              limits: dict | None = None, ports: list | None = None, mounts: list | None = None,
              readiness: dict | None = None) -> dict:
    all_env = [{"name": contract.TOPOLOGY_ENV, "value": topology}]
    if c.fail_fast:
        # The coordinator's wrapper binds the group channel to its own pod IP.
        all_env.append({"name": contract.POD_IP_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    all_env += [{"name": k, "value": str(v)} for k, v in (env or {}).items()]
    all_env += [{"name": k, "value": str(v)} for k, v in c.env.items()]
    out = {
        "name": name,
        "image": c.image,
        "command": command,
        "env": all_env,
        "volumeMounts": [{"name": contract.PODINFO_VOLUME, "mountPath": contract.PODINFO_DIR, "readOnly": True}]
        + ([{"name": contract.GROUP_VOLUME, "mountPath": contract.GROUP_TOKEN_DIR, "readOnly": True}]
           if c.fail_fast else [])
        + list(mounts or []),
        # The runtime writes the cause to /dev/termination-log; fall back to the log tail.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if c.image_pull_policy:
        out["imagePullPolicy"] = c.image_pull_policy
    res = resources(c, limits)
    if res:
        out["resources"] = res
    ports = list(ports or [])
    if c.fail_fast:
        ports.append({"name": "group", "containerPort": contract.GROUP_PORT})
    if ports:
        out["ports"] = ports
    if readiness:
        out["readinessProbe"] = readiness
    return out


def pod_spec(c: Common, containers: list, *, node_selector: dict | None = None, tolerations: list | None = None,
             volumes: list | None = None, host_network: bool = False) -> dict:
    spec = {
        # podFailurePolicy needs Never (kubernetes pkg/apis/batch/validation); the Job's
        # backoffLimit and the JobSet's failurePolicy do the restarting instead.
        "restartPolicy": "Never",
        "containers": containers,
        "volumes": [podinfo_volume()] + list(volumes or []),
    }
    if c.fail_fast:
        # 0444: the image's user may not be root and the manifest cannot know its gid (for
        # fsGroup); the container is the trust boundary, as for any Secret mounted there.
        spec["volumes"].append({"name": contract.GROUP_VOLUME, "secret": {
            "secretName": group_secret_name(c.name), "defaultMode": 0o444}})
    selector = dict(node_selector or {})
    selector.update(c.node_selector)
    if selector:
        spec["nodeSelector"] = selector
    tol = list(tolerations or []) + list(c.tolerations)
    if tol:
        spec["tolerations"] = tol
    if c.priority_class:
        spec["priorityClassName"] = c.priority_class
    if host_network:
        spec["hostNetwork"] = True
        # Without it a hostNetwork pod resolves with the node's resolv.conf and
        # cannot find its peers' `<host>.<subdomain>` names.
        spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    return spec


def replicated_job(name: str, replicas: int, pods: int, spec: dict, *, job_annotations: dict | None = None,
                   depends_on: list | None = None, container_name: str = CONTAINER) -> dict:
    """A ReplicatedJob of Indexed Jobs with all pods running at once (completions = parallelism)."""
    job_spec = {
        "parallelism": pods,
        "completions": pods,
        "completionMode": "Indexed",
        # Any pod failure fails its Job at once; the JobSet then restarts everything
        # together (a distributed job cannot lose one member and carry on).
        "backoffLimit": 0,
        "podFailurePolicy": {"rules": [
            {"action": "FailJob",
             "onExitCodes": {"containerName": container_name, "operator": "In", "values": [contract.EXIT_CONFIG]}},
            # A pod that only stopped because a peer failed first does not fail its Job:
            # the root cause's Job does, so JobSet's failurePolicy acts on the real cause.
            {"action": "Ignore",
             "onExitCodes": {"containerName": container_name, "operator": "In",
                             "values": [contract.EXIT_PEER_FAILED]}},
        ]},
        "template": {"spec": spec},
    }
    out = {"name": name, "replicas": replicas, "template": {"spec": job_spec}}
    if job_annotations:
        out["template"]["metadata"] = {"annotations": dict(job_annotations)}
    if depends_on:
        out["dependsOn"] = depends_on
    return out


def topology_of(rjobs: list) -> str:
    """`name:REPLICASxPODS,...` for the env var, from the same values the spec holds."""
    return str(js.topology({"spec": {"replicatedJobs": rjobs}}))


def jobset(c: Common, rjobs: list, *, coordinator: tuple | None = None, success_targets: list | None = None,
           annotations: dict | None = None) -> dict:
    meta = {"name": c.name, "namespace": c.namespace}
    labels = {contract.KUEUE_QUEUE_LABEL: c.queue} if c.queue else {}
    if labels:
        meta["labels"] = labels
    if annotations:
        meta["annotations"] = dict(annotations)
    network = {"enableDNSHostnames": True, "publishNotReadyAddresses": True}
    if c.subdomain:
        network["subdomain"] = c.subdomain
    spec = {"network": network}
    if coordinator:
        rjob, job_index, pod_index = coordinator
        spec["coordinator"] = {"replicatedJob": rjob, "jobIndex": job_index, "podIndex": pod_index}
    success = {"operator": "All"}
    if success_targets:
        success["targetReplicatedJobs"] = list(success_targets)
    spec["successPolicy"] = success
    spec["failurePolicy"] = {
        "maxRestarts": c.max_restarts,
        "restartStrategy": "Recreate",
        # EXIT_CONFIG -> podFailurePolicy FailJob -> Job fails with reason
        # PodFailurePolicy -> this rule fails the JobSet without a restart.
        # Everything else (BackoffLimitExceeded) matches no rule -> RestartJobSet.
        "rules": [{"name": CONFIG_RULE, "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}],
    }
    if c.ttl is not None:
        spec["ttlSecondsAfterFinished"] = c.ttl
    spec["replicatedJobs"] = rjobs
    return {"apiVersion": contract.JOBSET_API_VERSION, "kind": contract.JOBSET_KIND, "metadata": meta, "spec": spec}


def network_policies(c: Common) -> list:
    """With --network-policy: ingress to the JobSet's pods only from pods of the same JobSet (and
    not from elsewhere in the cluster), on every port.  Who cannot reach the group, leaders' and
    MPI ports cannot flood them (docs/fail-fast.md, Threat model).  Egress is left alone; a
    cluster without a NetworkPolicy implementation accepts the object and enforces nothing."""
    if not c.network_policy:
        return []
    own = {"matchLabels": {contract.JOBSET_NAME_KEY: c.name}}
    return [{
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"{c.name}-pods", "namespace": c.namespace},
        "spec": {"podSelector": own, "policyTypes": ["Ingress"], "ingress": [{"from": [{"podSelector": own}]}]},
    }]


def finish(docs: list, c: Common | None = None) -> list:
    """Run the webhook rules on what was built; raise ConfigError naming each problem.
    With the common options `c`, the documents every kind may add come last (network_policies)."""
    import copy

    from .validate import check
    if c is not None:
        docs = [*docs, *network_policies(c)]
    check(docs)
    # Callers get documents that share no sub-objects, so editing one pod spec
    # cannot silently change another.
    return copy.deepcopy(docs)
