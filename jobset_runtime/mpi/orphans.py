"""What mpirun leaves behind when it is stopped: its agents, each in a process group of its own.

PRRTE (Open MPI 5's mpirun) moves every remote-start agent it forks (the launcher's
exec agent, or ssh) into a process group of its own (seen here: each agent's pgid is
its own pid, its parent prterun).  Stopping mpirun's process group, as the launcher
does when mpirun hangs after announcing the job's end (announcements.py) or misses a
lost worker, therefore leaves the agents running: each keeps its daemon alive on its
worker until that worker ends, and all of them hold the launcher's stdout and stderr,
so whatever reads the launcher's output waits for them after the launcher is gone.

So the launcher is made the child subreaper of what it starts (PR_SET_CHILD_SUBREAPER):
an agent orphaned by mpirun's end becomes its child, and once mpirun is done, is given
a moment to end by itself (a successful run's agents are still relaying their daemons'
last output when mpirun exits 0), and then stopped.  A stopped agent closes its channel,
and its worker stops the daemon at once (worker.py).  Children the process had before mpirun started (a benchmark's worker
processes) are never touched.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time

_PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def adopt(on: bool = True) -> bool:
    """Make this process the reaper of its orphaned descendants (on=False: no longer); False where
    the kernel cannot."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children(pid: int | None = None) -> set[int]:
    """The processes whose parent is `pid` (default: this one), from /proc."""
    pid = os.getpid() if pid is None else pid
    found = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        fields = stat[stat.rindex(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.add(int(entry))
    return found


def _reap(pids: set[int]) -> set[int]:
    """Reap those of `pids` that have exited; the ones still running."""
    left = set()
    for pid in pids:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # not ours to reap, or reaped already
            done = pid
        if not done:
            left.add(pid)
    return left


def _wait(pids: set[int], timeout: float) -> set[int]:
    """Until every one of `pids` has exited and been reaped, or `timeout` passes; those left."""
    deadline = time.monotonic() + timeout
    left = _reap(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = _reap(left)
    return left


def stop(pids: set[int], settle: float = 0.0, grace: float = 1.0) -> list[int]:
    """Let `pids` (children of this process) end by themselves for `settle` s, then SIGTERM those
    left, SIGKILL them `grace` s later, and reap them all; the pids that had to be signalled."""
    left = _wait(set(pids), settle)
    signalled = []
    for pid in sorted(left):
        try:
            os.kill(pid, signal.SIGTERM)
            signalled.append(pid)
        except ProcessLookupError:
            pass
    left = _wait(left, grace)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _wait(left, 10.0)  # SIGKILL is not refused; a moment to be reaped
    return signalled
