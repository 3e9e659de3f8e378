"""`tpu-multislice`: N TPU slices of M hosts each, one Job per slice (MegaScale).

One ReplicatedJob `slice` (replicas = slices, parallelism = completions = hosts per
slice), one slice per node pool through the exclusive-topology annotation, the
GKE TPU node selectors, `google.com/tpu` limits and toleration.  `jobset-run --tpu`
turns the pod metadata into the TPU_* / MEGASCALE_* env libtpu and JAX read.

The slice's shape comes from `tpu_shapes.resolve`: one type name (`v5p-256`) fills the
accelerator label, topology, chips per host and hosts per slice, and values given
explicitly must agree, so a JobSet never waits for hosts that no slice has.
"""

from __future__ import annotations

from .. import contract, tpu_shapes
from ..errors import ConfigError
from . import common

RJOB = "slice"
DEFAULT_EXCLUSIVE_TOPOLOGY = "cloud.google.com/gke-nodepool"
TPU_RESOURCE = "google.com/tpu"
ACCELERATOR_SELECTOR = "cloud.google.com/gke-tpu-accelerator"
TOPOLOGY_SELECTOR = "cloud.google.com/gke-tpu-topology"


def tpu_multislice(*, slices: int, tpu_type: str | None = None, hosts_per_slice: int | None = None,
                   accelerator: str | None = None, topology: str | None = None, chips_per_host: int | None = None,
                   exclusive_topology: str = DEFAULT_EXCLUSIVE_TOPOLOGY, host_network: bool = False,
                   **common_options) -> list:
    """The documents (one JobSet) for a multislice TPU job.

    Give `tpu_type` (e.g. "v5p-256"), or `accelerator` and `topology`; the rest is derived
    and whatever is given is checked against it (ConfigError naming the right numbers)."""
    c = common.Common(**common_options)
    c.check()
    common.positive(slices, "--slices")
    if hosts_per_slice is not None:
        common.positive(hosts_per_slice, "--hosts-per-slice")
    if chips_per_host is not None:
        common.positive(chips_per_host, "--chips-per-host")
    shape = tpu_shapes.resolve(tpu_type=tpu_type, accelerator=accelerator, topology=topology,
                               chips_per_host=chips_per_host, hosts_per_slice=hosts_per_slice)
    if slices > 1 and shape.hosts == 1:
        # GKE "Deploy TPU Multislice": multi-host slice node pools only.
        raise ConfigError(f"--slices {slices}: {shape.describe()}, and Multislice runs only on slices of 2 or more "
                          f"hosts: use --slices 1, or a larger slice such as --tpu-type "
                          f"{shape.generation.type_name(2 * tpu_shapes.MULTI_HOST_CHIPS)}")
    accelerator, topology = shape.generation.accelerator, shape.topology
    hosts_per_slice, chips_per_host = shape.hosts, shape.chips_per_host
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
