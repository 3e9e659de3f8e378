"""mpi4py communicators that follow the JobSet's shape: one per slice (Job), one per replicated job.

A rank learns where it is from its pod's hostname, `<js>-<rjob>-<jobIdx>-<podIdx>`
(identity.hostname_of), which every MPI daemon started on that pod inherits;
ranks need no pod metadata of their own.  One `allgather` of a short string
and one `Split`: collective over `comm`, so every rank must call them.
mpi4py is imported by the caller; this module does not import it.
"""

from __future__ import annotations

import re
import socket

from ..errors import ConfigError

_POD = re.compile(r"^(?P<rjob>.+)-(?P<job>\d+)-(?P<pod>\d+)$")


def _parts(hostname: str) -> re.Match:
    m = _POD.match(hostname)
    if not m:
        raise ConfigError(f"hostname {hostname!r} is not a JobSet pod's `<jobset>-<replicatedJob>-<jobIndex>-<podIndex>`; "
                          "these communicators only make sense inside a JobSet")
    return m


def slice_key(hostname: str) -> str:
    """`js-worker-1-3` -> `js-worker-1`: the Job (slice) the pod belongs to."""
    m = _parts(hostname)
    return f"{m['rjob']}-{m['job']}"


def replicated_job_key(hostname: str) -> str:
    """`js-worker-1-3` -> `js-worker`."""
    return _parts(hostname)["rjob"]


def colors(keys: list[str]) -> list[int]:
    """A colour per key, numbered in order of first appearance (so by rank)."""
    order: dict[str, int] = {}
    return [order.setdefault(k, len(order)) for k in keys]


def split_by(comm, key: str):
    """Split `comm` into one communicator per distinct `key`; ranks keep their relative order."""
    keys = comm.allgather(key)
    return comm.Split(colors(keys)[comm.Get_rank()], comm.Get_rank())


def slice_comm(comm=None, hostname: str | None = None):
    """The ranks on the pods of this pod's Job (one TPU slice / one Job of a replicated job)."""
    return split_by(_world(comm), slice_key(hostname or socket.gethostname()))


def replicated_job_comm(comm=None, hostname: str | None = None):
    """The ranks on the pods of this pod's replicated job."""
    return split_by(_world(comm), replicated_job_key(hostname or socket.gethostname()))


def leaders_comm(comm=None, hostname: str | None = None):
    """Rank 0 of every slice together (for cross-slice reductions); MPI.COMM_NULL elsewhere."""
    from mpi4py import MPI

    world = _world(comm)
    local = slice_comm(world, hostname)
    color = 0 if local.Get_rank() == 0 else MPI.UNDEFINED
    local.Free()
    return world.Split(color, world.Get_rank())


def _world(comm):
    if comm is not None:
        return comm
    from mpi4py import MPI

    return MPI.COMM_WORLD
