"""`jax`: multi-host JAX on GPUs or CPUs.

One ReplicatedJob `worker` with R replicas of H hosts each; process 0 (worker-0-0)
is the coordinator set through spec.coordinator.  `jobset_runtime.jax.initialize()`
in the training code reads what `jobset-run` exports.
"""

from __future__ import annotations

from .. import contract
from . import common

RJOB = "worker"
GPU_RESOURCE = "nvidia.com/gpu"


def jax(*, replicas: int = 1, hosts: int, gpus_per_host: int = 0, **common_options) -> list:
    """The documents (one JobSet) for a multi-host JAX job."""
    c = common.Common(**common_options)
    c.check()
    common.positive(replicas, "--replicas")
    common.positive(hosts, "--hosts")
    if not isinstance(gpus_per_host, int) or gpus_per_host < 0:
        raise common.ConfigError(f"--gpus-per-host {gpus_per_host!r}: must be 0 (CPU) or more")
    topo = common.topology_of([{"name": RJOB, "replicas": replicas, "template": {"spec": {"completions": hosts}}}])
    command = common.runner_command(c, "coordinator", c.command)
    limits = {GPU_RESOURCE: gpus_per_host} if gpus_per_host else None
    main = common.container(c, command, topo, limits=limits,
                            ports=[{"name": "jax", "containerPort": contract.JAX_PORT}])
    rjob = common.replicated_job(RJOB, replicas, hosts, common.pod_spec(c, [main]))
    return common.finish([*common.group_secrets(c), common.jobset(c, [rjob], coordinator=(RJOB, 0, 0))], c)
