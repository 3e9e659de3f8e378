"""The env a training process gets: our names, PyTorch's, and libtpu's.

Pure: Identity in, dicts out.  `merge` never overrides a value already in the
environment (GKE's TPU webhook injects TPU_WORKER_ID and TPU_WORKER_HOSTNAMES,
users set MASTER_PORT) and reports each value that disagrees with JobSet's view.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping  # not typing: a costly import on every start

from . import contract
from .errors import ConfigError
from .identity import Identity


def _known(pairs: dict[str, Callable[[], object]]) -> dict[str, str]:
    """Evaluate each value; leave out the ones the pod cannot know (no topology)."""
    out = {}
    for name, fn in pairs.items():
        try:
            value = fn()
        except ConfigError:
            continue
        if value is not None:
            out[name] = str(value)
    return out


def runtime_env(ident: Identity) -> dict[str, str]:
    """JOBSET_RUNTIME_*: the identity, under the same names the identity reads back."""
    fields = {f: (lambda f=f: getattr(ident, f)) for f in contract.IDENTITY_ENV}
    fields["coordinator"] = lambda: ident.coordinator_host
    env = _known({contract.IDENTITY_ENV[f]: fn for f, fn in fields.items()})
    env.update(_known({
        contract.RANK_ENV: lambda: ident.rank,
        contract.WORLD_SIZE_ENV: lambda: ident.world_size,
        contract.SLICE_ID_ENV: lambda: ident.slice_id,
        contract.NUM_SLICES_ENV: lambda: ident.replicated_job_replicas,
        contract.HOSTS_PER_SLICE_ENV: lambda: ident.hosts_per_slice,
        contract.WORKER_ID_ENV: lambda: ident.worker_id,
        contract.HOST_ENV: lambda: ident.hostname,
        contract.FQDN_ENV: ident.fqdn,
        contract.COORDINATOR_ADDRESS_ENV: lambda: ident.fqdn(ident.coordinator),
        contract.TOPOLOGY_ENV: lambda: ident.topology,
        contract.POD_IP_ENV: lambda: ident.pod_ip,
    }))
    return env


def torch_env(ident: Identity, port: int = contract.TORCH_PORT, master_addr: str | None = None) -> dict[str, str]:
    """torch.distributed env:// names (one process per pod) and torchrun's PET_* arguments.

    `master_addr`: the coordinator's address when already resolved; else its FQDN."""
    master = (lambda: master_addr) if master_addr else (lambda: ident.fqdn(ident.coordinator))
    return _known({
        contract.TORCH_MASTER_ADDR: master,
        contract.TORCH_MASTER_PORT: lambda: port,
        contract.TORCH_WORLD_SIZE: lambda: ident.world_size,
        contract.TORCH_RANK: lambda: ident.rank,
        contract.TORCH_NODE_RANK: lambda: ident.rank,
        contract.TORCHRUN_NNODES: lambda: ident.world_size,
        contract.TORCHRUN_NODE_RANK: lambda: ident.rank,
        contract.TORCHRUN_MASTER_ADDR: master,
        contract.TORCHRUN_MASTER_PORT: lambda: port,
    })


def tpu_env(ident: Identity) -> dict[str, str]:
    """What libtpu and jax's Cloud TPU cluster read, one slice per Job (REFERENCE.md: JAX).

    Every value is required here: a TPU job asked for them explicitly.
    """
    slice_hosts = ",".join(ident.fqdn(h) for h in ident.slice_hosts())
    return {
        contract.TPU_WORKER_ID: str(ident.worker_id),
        contract.TPU_WORKER_HOSTNAMES: slice_hosts,
        contract.MEGASCALE_COORDINATOR_ADDRESS: ident.fqdn(ident.slice_coordinator),
        contract.MEGASCALE_NUM_SLICES: str(ident.num_slices),
        contract.MEGASCALE_SLICE_ID: str(ident.slice_id),
    }


def _host_parts(value: str) -> list[str]:
    """Compare hosts by their first label, so `a.sub` and `a.sub.ns.svc.cluster.local` agree."""
    return [h.strip().split(":")[0].split(".")[0] for h in value.split(",")]


def _agrees(name: str, ours: str, theirs: str) -> bool:
    if name in (contract.TPU_WORKER_HOSTNAMES, contract.MEGASCALE_COORDINATOR_ADDRESS,
                contract.TORCH_MASTER_ADDR, contract.TORCHRUN_MASTER_ADDR):
        return _host_parts(ours) == _host_parts(theirs)
    return ours == theirs


def merge(environ: Mapping[str, str], exported: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """(environ + exported without overriding, a warning per disagreeing pre-set value)."""
    env = dict(environ)
    warnings = []
    for name, value in exported.items():
        if name not in env:
            env[name] = value
        elif not _agrees(name, value, env[name]):
            warnings.append(f"{name}={env[name]!r} is already set and kept, but JobSet's metadata says {value!r}")
    return env, warnings
