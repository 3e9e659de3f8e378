"""Communicators per slice and per replicated job.

The `mpi`-marked tests run under `mpirun -n 4 python -m pytest --with-mpi` (driven by
test_comm_under_mpirun below); each rank plays a pod by hostname: ranks 0-1 on
`js-worker-0-*`, ranks 2-3 on `js-worker-1-*`.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mpifixtures as c
from jobset_runtime.errors import ConfigError
from jobset_runtime.mpi import comm as jc


def test_keys_and_colors():
    assert jc.slice_key("js-worker-1-3") == "js-worker-1"
    assert jc.replicated_job_key("my-js-big-worker-12-0") == "my-js-big-worker"
    assert jc.colors(["a", "a", "b", "a", "c"]) == [0, 0, 1, 0, 2]
    with pytest.raises(ConfigError, match="JobSet pod"):
        jc.slice_key("laptop")


def _pretend(rank: int) -> str:
    return f"js-worker-{rank // 2}-{rank % 2}"


@pytest.mark.mpi(min_size=4)
def test_slice_comm():
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    sub = jc.slice_comm(world, _pretend(world.rank))
    assert sub.size == 2
    assert sub.rank == world.rank % 2
    assert sub.allgather(world.rank) == [world.rank - world.rank % 2, world.rank - world.rank % 2 + 1]
    sub.Free()


@pytest.mark.mpi(min_size=4)
def test_replicated_job_comm_and_leaders():
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    rj = jc.replicated_job_comm(world, _pretend(world.rank))
    assert rj.size == world.size
    rj.Free()
    leaders = jc.leaders_comm(world, _pretend(world.rank))
    if world.rank % 2 == 0:
        assert leaders.size == world.size // 2
        assert leaders.allreduce(world.rank) == sum(range(0, world.size, 2))
        leaders.Free()
    else:
        assert leaders == MPI.COMM_NULL


def test_comm_under_mpirun():
    """Drive the `mpi`-marked tests with a real mpirun and 4 ranks (pytest-mpi)."""
    ompi = c.need("openmpi")
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "OMPI_", "PMIX_", "PRTE_"))}
    env["PYTHONPATH"] = str(root)
    flags = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    out = subprocess.run([ompi.mpirun, *flags, "--oversubscribe", "--bind-to", "none", "-n", "4",
                          sys.executable, "-m", "pytest", "--with-mpi", "-q", "-p", "no:cacheprovider",
                          "-m", "mpi", str(Path(__file__))], cwd=root, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "2 passed" in out.stdout
