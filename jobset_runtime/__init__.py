"""jobset-runtime: bring a distributed job up inside the pods of a Kubernetes JobSet.

The stable API is what this module exports (`__all__`), plus `jobset_runtime.jax.initialize`
and the command-line tools; everything else is internal and may change.  See docs/api.md.

    import jobset_runtime as jr

    me = jr.identity()                      # rank, slice, coordinator, every peer's hostname
    jr.wait_for_peers("slice", timeout=300) # {hostname: ip} once every pod of my slice resolves
    os.environ.update(jr.framework_env("torch"))

Importing this package is cheap (standard library only): heavier modules load on first use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .errors import ConfigError, DnsUnavailable, JobSetRuntimeError, PeersTimeout
from .identity import SCOPES, Identity, Topology

__version__ = "0.1.0"

__all__ = [
    "FRAMEWORKS",
    "SCOPES",
    "ConfigError",
    "DnsUnavailable",
    "Identity",
    "JobSetRuntimeError",
    "PeersTimeout",
    "Topology",
    "__version__",
    "framework_env",
    "identity",
    "mpi_hostfile",
    "wait_for_peers",
]

FRAMEWORKS = ("runtime", "torch", "tpu", "jax")


def identity(environ: Mapping[str, str] | None = None) -> Identity:
    """This pod's identity, from the downward-API files, env, /etc/hosts and resolv.conf.

    Raises ConfigError (naming the missing input and the fix) outside a JobSet pod.
    """
    return _this_pod(environ)


def _this_pod(environ: Mapping[str, str] | None = None) -> Identity:
    from .podinfo import current_identity

    return current_identity(environ)


def wait_for_peers(
    peers: str | Iterable[str] = "coordinator",
    *,
    port: int | None = None,
    timeout: float = 300.0,
    identity: Identity | None = None,
) -> dict[str, str]:
    """Block until the peers resolve in DNS (and accept TCP on `port`); return {hostname: ip}.

    `peers` is a scope — "coordinator", "slice" or "all" (SCOPES) — or pod hostnames
    (`train-slice-0-3`) or FQDNs.  Names are asked of JOBSET_RUNTIME_NAMESERVERS, else
    /etc/resolv.conf's servers, for the records of this pod's address family.  Raises
    PeersTimeout (exit code 69) naming what is still missing when `timeout` passes,
    DnsUnavailable (also 69) when no DNS server answered at all.
    """
    from .addresses import family_of
    from .peers import wait_for_hosts

    ident = identity if identity is not None else _this_pod()
    if isinstance(peers, str):
        if peers == "none" or peers not in SCOPES:
            raise ConfigError(f"peers={peers!r}: give one of {', '.join(SCOPES)} or a list of pod hostnames")
        hosts = ident.scope_hosts(peers)
    else:
        hosts = list(peers)
    fqdns = {h: h if "." in h else ident.fqdn(h) for h in hosts}
    found = wait_for_hosts(list(fqdns.values()), port=port, timeout=timeout, family=family_of(ident.pod_ip))
    return {h: found[f] for h, f in fqdns.items()}


def framework_env(framework: str = "runtime", *, identity: Identity | None = None) -> dict[str, str]:
    """The env a framework reads, computed for this pod; nothing is set.

    "runtime": JOBSET_RUNTIME_* (rank, world size, slice, coordinator, ...);
    "torch": MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, NODE_RANK and torchrun's PET_*;
    "tpu": TPU_WORKER_ID, TPU_WORKER_HOSTNAMES and MEGASCALE_*; "jax": JAX_COORDINATOR_*.
    `jobset-run` exports the same values without overriding any already set.
    """
    from . import exports

    ident = identity if identity is not None else _this_pod()
    if framework == "runtime":
        return exports.runtime_env(ident)
    if framework == "torch":
        return exports.torch_env(ident)
    if framework == "tpu":
        return exports.tpu_env(ident)
    if framework == "jax":
        from .jax import wrapper_env

        return wrapper_env(ident)
    raise ConfigError(f"framework {framework!r}: use one of {', '.join(FRAMEWORKS)}")


def mpi_hostfile(hosts: Iterable[str], *, slots: int = 1, mpi: str = "openmpi", path: str | None = None) -> str:
    """An MPI hostfile for `hosts` (`host slots=N` for Open MPI, `host:N` for MPICH and Intel MPI).

    Returns its text; with `path`, also writes it atomically (readers never see half a file).
    `python -m jobset_runtime.mpi launcher` writes one itself; this is for launchers of your own.
    """
    from .mpi import hostfile

    text = hostfile.render(hostfile.entries(list(hosts), slots), mpi)
    if path is not None:
        from .files import write_atomic

        write_atomic(path, text)
    return text
