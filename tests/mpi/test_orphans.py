"""mpirun's agents, left running in process groups of their own when mpirun is stopped, are
adopted by the launcher and stopped (jobset_runtime/mpi/orphans.py).  Real processes."""

import os
import subprocess
import sys

import pytest

from jobset_runtime.mpi import orphans

# An "mpirun" that starts an "agent" in a process group of its own (as PRRTE does), which ignores
# SIGTERM, prints its pid and stays AGENT_S seconds, and then exits, leaving the agent behind.
MPIRUN = """
import os, signal, sys, time
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(os.getpid(), flush=True)
    time.sleep(float(sys.argv[1]))
    os._exit(0)
time.sleep(0.2)
"""


def _leave_agent(stays: float) -> int:
    mpirun = subprocess.Popen([sys.executable, "-c", MPIRUN, str(stays)], stdout=subprocess.PIPE, text=True)
    agent = int(mpirun.stdout.readline())
    assert mpirun.wait(20) == 0
    mpirun.stdout.close()
    return agent


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
        agent = _leave_agent(600)
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


def test_an_agent_that_ends_by_itself_while_settling_is_not_signalled():
    """What a successful run's agents do: end once their worker relayed the daemon's last output."""
    if not orphans.adopt():
        pytest.skip("this kernel has no PR_SET_CHILD_SUBREAPER")
    try:
        before = orphans.children()
        agent = _leave_agent(0.5)
        left = orphans.children() - before
        assert left == {agent}, left
        assert orphans.stop(left, settle=30) == []
        assert _state(agent) is None  # ended, and reaped
    finally:
        orphans.adopt(False)


def test_children_names_this_processs_children_only():
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as child:
        try:
            assert child.pid in orphans.children()
            assert child.pid not in orphans.children(os.getppid())
        finally:
            child.kill()
