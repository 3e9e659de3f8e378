"""`torch`: torchrun-style jobs.

One ReplicatedJob `node` with N pods; `jobset-run` exports MASTER_ADDR, MASTER_PORT,
WORLD_SIZE, RANK, NODE_RANK and torchrun's PET_* variables from the pod metadata,
so `torchrun train.py` needs no rendezvous flags.  --nproc-per-node goes in as
PET_NPROC_PER_NODE, which torchrun reads for its --nproc-per-node.
"""

from __future__ import annotations

from .. import contract
from . import common

RJOB = "node"
GPU_RESOURCE = "nvidia.com/gpu"


def torch(*, nodes: int, nproc_per_node: int = 1, gpus_per_node: int = 0, **common_options) -> list:
    """The documents (one JobSet) for a torchrun-style job."""
    c = common.Common(**common_options)
    c.check()
    common.positive(nodes, "--nodes")
    common.positive(nproc_per_node, "--nproc-per-node")
    if not isinstance(gpus_per_node, int) or gpus_per_node < 0:
        raise common.ConfigError(f"--gpus-per-node {gpus_per_node!r}: must be 0 (CPU) or more")
    topo = common.topology_of([{"name": RJOB, "replicas": 1, "template": {"spec": {"completions": nodes}}}])
    command = common.runner_command(c, "coordinator", c.command)
    limits = {GPU_RESOURCE: gpus_per_node} if gpus_per_node else None
    main = common.container(c, command, topo, limits=limits,
                            env={contract.TORCHRUN_NPROC_PER_NODE: nproc_per_node},
                            ports=[{"name": "c10d", "containerPort": contract.TORCH_PORT}])
    rjob = common.replicated_job(RJOB, 1, nodes, common.pod_spec(c, [main]))
    return common.finish([*common.group_secrets(c), common.jobset(c, [rjob], coordinator=(RJOB, 0, 0))], c)
