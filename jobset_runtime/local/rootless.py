"""`--mode rootless`: run the runner inside a user namespace it makes for itself.

The invoking process stays outside as a small parent: it starts

    unshare --user --map-root-user --mount --pid --fork --mount-proc --kill-child -- \
        python -m jobset_runtime.local.cli run FILE ... --userns-state DIR

in a session of its own, passes SIGINT/SIGTERM/SIGHUP on to the runner (which
stops its pods as in netns mode), and returns the runner's exit code.  The
runner is PID 1 of its PID namespace, so its death kills every pod process and
the kernel drops the namespaces and mounts with them; if this parent is killed
outright, unshare gets SIGKILL (PR_SET_PDEATHSIG) and --kill-child passes it
on.  DIR is an empty directory the runner mounts a tmpfs on for its namespace
files; it is removed here when the runner ends.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time

PR_SET_PDEATHSIG = 1


def _state_parent() -> str:
    # `ip -batch` splits on whitespace, so the namespace paths may not contain any.
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg and not any(c.isspace() for c in xdg) and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK):
        return xdg
    return "/tmp"


def inner_argv(args, run_dir: str, state_dir: str) -> list:
    """The runner's own command line, resolved so it means the same inside."""
    argv = [sys.executable, "-m", "jobset_runtime.local.cli", "run", os.path.abspath(args.file),
            "--run-dir", run_dir, "--mode", "rootless", "--userns-state", state_dir,
            "--dns-delay", repr(args.dns_delay), "--ip-family", args.ip_family]
    for item in args.skew:
        argv += ["--skew", item]
    for opt, value in (("--timeout", args.timeout), ("--crash-backoff", args.crash_backoff),
                       ("--pod-backoff", args.pod_backoff), ("--mtu", args.mtu)):
        if value is not None:
            argv += [opt, repr(value)]
    return argv


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _child_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = f.read().split()
        return int(kids[0]) if kids else None
    except (OSError, ValueError):
        return None


def run_rootless(args, run_dir: str) -> int:
    from .pods import userns_argv

    state_dir = tempfile.mkdtemp(prefix="jsr-", dir=_state_parent())
    pending: list = []
    old = {}
    try:
        # Our own session: Ctrl-C reaches only this process, which hands it on once
        # (unshare itself ignores SIGINT and SIGTERM while it waits).
        proc = subprocess.Popen(userns_argv(inner_argv(args, run_dir, state_dir)),
                                start_new_session=True, preexec_fn=_die_with_parent)
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            old[s] = signal.signal(s, lambda signum, frame: pending.append(signum))
        inner = None
        while True:
            try:
                code = proc.wait(timeout=0.1 if pending else 0.5)
                break
            except subprocess.TimeoutExpired:
                pass
            if pending:
                inner = inner or _child_of(proc.pid)
                if inner is not None:
                    while pending:
                        try:
                            os.kill(inner, pending.pop(0))
                        except OSError:
                            pass
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        # The runner unmounted its tmpfs (or the kernel did, with its mount namespace).
        for _ in range(20):
            try:
                os.rmdir(state_dir)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)
    return 128 - code if code < 0 else code
