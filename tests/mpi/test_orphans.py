"""mpirun's agents, left running in process groups of their own when mpirun is stopped, are
adopted by the launcher and stopped (jobset_runtime/mpi/orphans.py).  Real processes."""

import os
import subprocess
import sys

import pytest

from jobset_runtime.mpi import orphans

# An "mpirun" that starts an "agent" in a process group of its own (as PRRTE does), which ignores
# SIGTERM, prints its pid, and then exits, leaving the agent behind.
MPIRUN = """
import os, signal, sys, time
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(os.getpid(), flush=True)
    time.sleep(600)
    os._exit(0)
time.sleep(0.2)
"""


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    return stat[stat.rindex(")") + 2]


def test_an_agent_left_by_mpirun_becomes_a_child_and_is_stopped_and_reaped():
    if not orphans.adopt():
        pytest.skip("this kernel has no PR_SET_CHILD_SUBREAPER")
    agent = None
    try:
        before = orphans.children()
        mpirun = subprocess.Popen([sys.executable, "-c", MPIRUN], stdout=subprocess.PIPE, text=True)
        agent = int(mpirun.stdout.readline())
        assert mpirun.wait(20) == 0
        assert os.getpgid(agent) == agent  # its own group: stopping mpirun's would not reach it
        left = orphans.children() - before
        assert left == {agent}, left  # mpirun's orphan is ours now
        assert orphans.stop(left, grace=0.5) == [agent]  # SIGTERM ignored: SIGKILL after the grace
        assert _state(agent) is None  # gone, and reaped: no zombie left
        assert orphans.children() - before == set()
        assert orphans.stop(set()) == []
    finally:
        orphans.adopt(False)
        if agent is not None and _state(agent) not in (None, "Z"):
            os.kill(agent, 9)


def test_children_names_this_processs_children_only():
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as child:
        try:
            assert child.pid in orphans.children()
            assert child.pid not in orphans.children(os.getppid())
        finally:
            child.kill()
