"""`tpu-multislice`: N TPU slices of M hosts each, one Job per slice (MegaScale).

One ReplicatedJob `slice` (replicas = slices, parallelism = completions = hosts per
slice), one slice per node pool through the exclusive-topology annotation, the
GKE TPU node selectors, `google.com/tpu` limits and toleration.  `jobset-run --tpu`
turns the pod metadata into the TPU_* / MEGASCALE_* env libtpu and JAX read.
"""

from __future__ import annotations

from .. import contract
from . import common

RJOB = "slice"
DEFAULT_EXCLUSIVE_TOPOLOGY = "cloud.google.com/gke-nodepool"
TPU_RESOURCE = "google.com/tpu"
ACCELERATOR_SELECTOR = "cloud.google.com/gke-tpu-accelerator"
TOPOLOGY_SELECTOR = "cloud.google.com/gke-tpu-topology"


def tpu_multislice(*, slices: int, hosts_per_slice: int, accelerator: str, topology: str,
                   chips_per_host: int = 4, exclusive_topology: str = DEFAULT_EXCLUSIVE_TOPOLOGY,
                   host_network: bool = False, **common_options) -> list:
    """The documents (one JobSet) for a multislice TPU job."""
    c = common.Common(**common_options)
    c.check()
    common.positive(slices, "--slices")
    common.positive(hosts_per_slice, "--hosts-per-slice")
    common.positive(chips_per_host, "--chips-per-host")
    topo = common.topology_of([{"name": RJOB, "replicas": slices,
                                "template": {"spec": {"completions": hosts_per_slice}}}])
    # Each host waits for its own slice and the coordinator, not all 12,736 pods.
    command = common.runner_command(c, "slice", c.command, extra=("--tpu",))
    ports = [
        {"name": "jax", "containerPort": contract.JAX_PORT},
        {"name": "megascale", "containerPort": contract.MEGASCALE_DEFAULT_PORT},
    ]
    main = common.container(c, command, topo, limits={TPU_RESOURCE: chips_per_host}, ports=ports)
    spec = common.pod_spec(
        c, [main],
        node_selector={ACCELERATOR_SELECTOR: accelerator, TOPOLOGY_SELECTOR: topology},
        tolerations=[{"key": TPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
        host_network=host_network,
    )
    rjob = common.replicated_job(RJOB, slices, hosts_per_slice, spec)
    doc = common.jobset(c, [rjob], coordinator=(RJOB, 0, 0),
                        annotations={contract.EXCLUSIVE_TOPOLOGY_KEY: exclusive_topology})
    return common.finish([*common.group_secrets(c), doc], c)
