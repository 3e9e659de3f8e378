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
import threading
import time
from dataclasses import dataclass

from . import contract
from .errors import JobSetRuntimeError
from .log import one_line

log = logging.getLogger("jobset_runtime.supervisor")

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def exit_code_of(status: int) -> int:
    """Popen.returncode → process exit code: -N (killed by signal N) becomes 128+N."""
    return contract.EXIT_SIGNAL_BASE - status if status < 0 else status


def describe_exit(program: str, code: int, with_code: bool = True) -> str:
    """`python was killed by SIGKILL (exit code 137)`, `python exited with code 3`."""
    program = one_line(program, 256)  # a path from the command line: any bytes
    if code > contract.EXIT_SIGNAL_BASE:
        try:
            name = signal.Signals(code - contract.EXIT_SIGNAL_BASE).name
            return f"{program} was killed by {name}" + (f" (exit code {code})" if with_code else "")
        except ValueError:
            pass
    return f"{program} exited" + (f" with code {code}" if with_code else "")


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


def start(argv: list[str], env: dict[str, str], stderr=None) -> Child:
    kwargs = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
    return Child(subprocess.Popen(argv, env=env, stderr=stderr, **kwargs))


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


# Set once the pod itself is asked to stop (the kubelet's SIGTERM, a Ctrl-C): no restart after that.
stop_requested = threading.Event()


def launch(argv: list[str], env: dict[str, str], stderr=None) -> Child:
    """Start the command with the signals a pod or terminal sends already relayed to its whole
    process group; one that arrives while it starts is delivered as soon as it exists.
    `stderr`: as Popen's (subprocess.PIPE to read it); None, this process's."""
    holder: dict = {"child": None, "pending": []}

    def relay(signum, _frame):
        log.info("received %s, forwarding to the command", signal.Signals(signum).name)
        if signum in (signal.SIGTERM, signal.SIGINT):
            stop_requested.set()
        if holder["child"] is None:
            holder["pending"].append(signum)
        else:
            holder["child"].signal(signum)

    for sig in FORWARDED:
        signal.signal(sig, relay)
    child = holder["child"] = start(argv, env, stderr)
    for signum in holder["pending"]:
        child.signal(signum)
    return child


def cannot_start(program: str, e: OSError) -> int:
    """The shell's codes: 127 not found, 126 found but not runnable."""
    log.error("cannot run %s: %s", program, e.strerror)
    return contract.EXIT_NOT_FOUND if isinstance(e, FileNotFoundError) else contract.EXIT_NOT_EXECUTABLE


def exec_replace(argv: list[str], env: dict[str, str]) -> int:
    """Become the command (a shell entrypoint's final `exec`); returns only when it cannot start."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    # What Popen(restore_signals=True) does for a child: Python ignores SIGPIPE and SIGXFSZ,
    # and an exec keeps ignored signals (a shell pipeline would then print "Broken pipe").
    for name in ("SIGPIPE", "SIGXFSZ", "SIGXFZ"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        return cannot_start(argv[0], e)
    raise AssertionError("unreachable")


def run(argv: list[str], env: dict[str, str], grace: float = 10.0) -> int:
    """Run the command to completion; leftovers in its process group are stopped afterwards."""
    try:
        child = launch(argv, env)
    except OSError as e:
        return cannot_start(argv[0], e)
    code = wait(child)
    if child.group_alive():
        log.info("the command left processes in its group; stopping them")
        child.stop(grace)
    return code


def termination_log_path(path: str | None = None) -> str | None:
    """Where the kubelet reads the cause: --termination-log, $JOBSET_RUNTIME_TERMINATION_LOG,
    else /dev/termination-log where the kubelet mounted it (elsewhere, leave /dev alone)."""
    path = path or os.environ.get(contract.TERMINATION_LOG_ENV)
    if path:
        return path
    return contract.TERMINATION_LOG if os.path.exists(contract.TERMINATION_LOG) else None


def read_termination_message(path: str | None) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(contract.TERMINATION_MESSAGE_MAX).decode("utf-8", "replace").strip()
    except (OSError, TypeError):
        return ""


def write_termination_message(message: str, path: str | None = None) -> bool:
    """Write the cause where the kubelet reads it: one line of valid UTF-8, at most 4 KiB
    (whatever bytes the cause held); False when the path is not writable."""
    path = termination_log_path(path)
    if path is None:
        return False
    data = one_line(message).encode("utf-8")
    if len(data) > contract.TERMINATION_MESSAGE_MAX:
        data = data[: contract.TERMINATION_MESSAGE_MAX - 3].decode("utf-8", "ignore").encode("utf-8") + b"..."
    try:
        with open(path, "wb") as f:
            f.write(data)
        return True
    except OSError:
        return False


@dataclass
class Outcome:
    """How a run in a group ended: the pod's exit code and the cause for the termination message."""

    code: int
    cause: str | None = None


def run_in_group(argv: list[str], env: dict[str, str], member, me, *, restarts: int = 0,
                 grace: float = 10.0, barrier_timeout: float = 300.0) -> Outcome:
    """Run the command under the group channel: fail fast across pods, restart in place.

    Epoch e starts the child with JOBSET_RUNTIME_RESTART=e.  A child that fails is reported to
    the group; an abort (ours echoed back, or a peer's) stops the child's process group.  After
    an abort and while restarts remain, every member meets at the barrier and starts again in
    the same pod; after the last, the pod that failed first exits with its own code and the
    others with EXIT_PEER_FAILED, so JobSet's failurePolicy can tell them apart.
    """
    current: list[Child | None] = [None]
    kill_timers: list[threading.Timer] = []
    stopped_by_group = threading.Event()

    def on_abort(failure) -> None:  # on the member's thread: signal only, never wait here
        child = current[0]
        if child is not None and failure.rank != me.rank:
            stopped_by_group.set()
            log.info("stopping the command (SIGTERM, then SIGKILL after %gs)", grace)
            child.signal(signal.SIGTERM)
            timer = threading.Timer(grace, child.signal, (signal.SIGKILL,))
            timer.daemon = True
            kill_timers.append(timer)
            timer.start()

    member.on_abort(on_abort)
    outcome = Outcome(contract.EXIT_PEER_FAILED, "the group stopped before the command ran")
    for epoch in range(restarts + 1):
        env = {**env, contract.RESTART_ENV: str(epoch)}
        stopped_by_group.clear()
        if member.aborted.is_set():  # aborted between the barrier and here
            code = contract.EXIT_PEER_FAILED
        else:
            try:
                child = current[0] = launch(argv, env)
            except OSError as e:
                code = cannot_start(argv[0], e)
            else:
                if member.aborted.is_set():  # the abort raced the start
                    on_abort(member.abort_cause)
                code = wait(child)
                if child.group_alive():
                    child.stop(grace)
                current[0] = None
                for timer in kill_timers:  # never SIGKILL a process group id that may be reused
                    timer.cancel()
                kill_timers.clear()
        if code == 0 and not member.aborted.is_set():
            if member.finish():
                return Outcome(contract.EXIT_OK)
        elif not member.aborted.is_set():
            member.report_failure(code, describe_exit(argv[0], code, with_code=False))
            member.aborted.wait(member.deadline * 2)
        failure = member.abort_cause
        if failure is not None and failure.rank == me.rank:
            outcome = Outcome(code, failure.describe())
        elif code != 0 and not stopped_by_group.is_set() and (failure is None or failure.rank is None):
            # Failed on its own while the coordinator was unreachable: as far as anyone knows, the cause.
            outcome = Outcome(code, describe_exit(argv[0], code))
        else:
            cause = failure.describe() if failure else "the group coordinator was lost"
            outcome = Outcome(contract.EXIT_PEER_FAILED, f"stopped because a peer failed: {cause}")
        if epoch == restarts or stop_requested.is_set():
            break
        log.info("restarting in place (%d of %d)", epoch + 1, restarts)
        try:
            member.restart_barrier(barrier_timeout)
        except JobSetRuntimeError as e:  # a member left, or never came: no restart; this epoch's end stands
            log.error("no restart in place: %s", e)
            break
    return outcome
