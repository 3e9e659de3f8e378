"""The child process: its own process group, forwarded signals, exit code, termination message.

`jobset-run` is often PID 1 of the container.  It starts the command in a new
process group so that stopping "the child" means stopping everything it spawned,
forwards the signals the kubelet and a terminal send, reaps orphans when it is
PID 1, and turns the outcome into an exit code a podFailurePolicy can match
(128+N for a signal, as shells report it) and a one-line cause the kubelet
shows in `kubectl describe pod` (the termination-message path).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from . import contract

log = logging.getLogger("jobset_runtime.supervisor")

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def exit_code_of(status: int) -> int:
    """Popen.returncode → process exit code: -N (killed by signal N) becomes 128+N."""
    return contract.EXIT_SIGNAL_BASE - status if status < 0 else status


def describe_exit(code: int) -> str:
    if code > contract.EXIT_SIGNAL_BASE:
        try:
            return f"was killed by {signal.Signals(code - contract.EXIT_SIGNAL_BASE).name} (exit code {code})"
        except ValueError:
            pass
    return f"exited with code {code}"


@dataclass
class Child:
    """A command running in its own process group."""

    proc: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def group_alive(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the whole group, wait up to `grace`, then SIGKILL what is left."""
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if self.proc.poll() is not None and not self.group_alive():
                return
            time.sleep(0.02)
        self.signal(signal.SIGKILL)


def start(argv: list[str], env: dict[str, str]) -> Child:
    kwargs = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
    return Child(subprocess.Popen(argv, env=env, **kwargs))


def wait(child: Child) -> int:
    """Wait for the child, reaping orphans when this process is PID 1; returns its exit code."""
    if os.getpid() != 1:
        return exit_code_of(child.proc.wait())
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return exit_code_of(child.proc.wait())
        if pid == child.pid:
            child.proc.returncode = os.waitstatus_to_exitcode(status)
            return exit_code_of(child.proc.returncode)


def forward_signals(child: Child) -> None:
    """Relay the signals a pod or terminal sends to the child's whole process group."""

    def relay(signum, _frame):
        log.info("received %s, forwarding to the command", signal.Signals(signum).name)
        child.signal(signum)

    for sig in FORWARDED:
        signal.signal(sig, relay)


def run(argv: list[str], env: dict[str, str], grace: float = 10.0) -> int:
    """Run the command to completion; leftovers in its process group are stopped afterwards."""
    try:
        child = start(argv, env)
    except FileNotFoundError:
        log.error("command not found: %s", argv[0])
        return 127
    except PermissionError:
        log.error("command not executable: %s", argv[0])
        return 126
    forward_signals(child)
    code = wait(child)
    if child.group_alive():
        log.info("the command left processes in its group; stopping them")
        child.stop(grace)
    return code


def write_termination_message(message: str, path: str | None = None) -> bool:
    """Write the cause where the kubelet reads it (at most 4 KiB); False when the path is not writable."""
    path = path or os.environ.get(contract.TERMINATION_LOG_ENV)
    if not path:
        # The kubelet mounts the default path into every container; elsewhere, leave /dev alone.
        path = contract.TERMINATION_LOG
        if not os.path.exists(path):
            return False
    data = message.encode("utf-8")[: contract.TERMINATION_MESSAGE_MAX]
    try:
        with open(path, "wb") as f:
            f.write(data)
        return True
    except OSError:
        return False
