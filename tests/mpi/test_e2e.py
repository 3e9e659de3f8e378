"""End to end: a launcher and 3 workers x 2 slots as namespace pods, real mpirun, real mpi4py.

The local JobSet runner was not available to this part, so the pods are network +
UTS namespaces made by the `cluster` fixture (conftest.py), each with its own
hostname and address, and names served by the embedded DNS server.
"""

import collections
import json
import sys
import time

import pytest

import conftest as c


def _result(stdout: str) -> dict:
    lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
    assert lines, stdout
    return json.loads(lines[-1][len("RESULT "):])


def _check_ranks(cluster, result):
    n = len(cluster.workers) * 2
    assert result["size"] == n
    assert result["sum"] == n * (n + 1) // 2
    # The test that catches all-ranks-on-the-launcher: each worker hosts exactly its 2 slots.
    assert collections.Counter(result["hosts"]) == {h: 2 for h in cluster.workers}


@pytest.mark.parametrize("which", ["openmpi", "mpich"])
def test_allreduce_on_every_worker(cluster, which):
    mpi = c.need(c.openmpi() if which == "openmpi" else c.mpich(), "Open MPI" if which == "openmpi" else "MPICH")
    cl = cluster(3)
    cl.start_workers(env=mpi.env)
    proc = cl.start_launcher(["--mpirun", mpi.mpirun, "--slots-per-worker", "2", "--timeout", "30",
                              "--", sys.executable, c.PROG], env=mpi.env)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    _check_ranks(cl, _result(out))
    assert "MPI: " + which in err
    codes = cl.wait_workers()
    assert codes == {h: 0 for h in cl.workers}, {h: cl.log(h) for h in cl.workers}
