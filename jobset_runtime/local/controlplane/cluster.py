"""`jobset-runtime local cluster up|down|status|env`: one cluster in one state directory.

`up` checks its input, then starts a supervisor (supervisor.py) in its own
session and waits until it reports the cluster ready; `down` (or SIGTERM /
Ctrl-C to the supervisor) stops the components in reverse order and removes
the state directory.  Pod namespaces left by a SIGKILLed node agent are reaped by
the next `down` or `up` (pods.reap_stale, as for `local run`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ...errors import ConfigError
from . import binaries
from .components import Layout
from .state import check_state_dir, default_state_dir, ours, read_info, running  # noqa: F401
from .supervisor import SUPERVISOR_LOG, free_port, port_free, serve, tail  # noqa: F401


def up(state_dir: Path, port: int, nodes: int, node_labels: list[str], foreground: bool, timeout: float,
       out=sys.stdout, agent_args: list | None = None) -> int:
    lay = Layout(state_dir.expanduser().resolve())
    binaries.locate()  # missing binaries: exit 2 before anything starts
    check_state_dir(lay)
    if running(lay):
        print(f"a cluster is already running in {lay.root}", file=sys.stderr)
        print(f"export KUBECONFIG={lay.kubeconfig}", file=out)
        return 0
    if lay.root.exists():
        _clean_leftovers(lay)
    if not port_free(port):
        raise ConfigError(f"port {port} on 127.0.0.1 is in use: stop what listens there or choose another with --port")
    _validate_labels(node_labels)
    if foreground:
        return serve(lay, port, nodes, node_labels, agent_args)
    lay.root.mkdir(parents=True, exist_ok=True)
    (lay.root / "logs").mkdir(exist_ok=True)
    log = open(lay.root / "logs" / SUPERVISOR_LOG, "ab")
    argv = [sys.executable, "-m", "jobset_runtime.local.controlplane.supervisor", "serve", str(lay.root),
            str(port), str(nodes), json.dumps(node_labels), json.dumps(agent_args or [])]
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
    log.close()
    deadline = time.monotonic() + timeout
    while not lay.ready.exists():
        if p.poll() is not None:
            print(f"error: the cluster did not start (exit {p.returncode}):\n"
                  f"{tail(Path(str(lay.root)) / 'logs' / SUPERVISOR_LOG, 30)}", file=sys.stderr)
            return p.returncode or 1
        if time.monotonic() > deadline:
            p.send_signal(signal.SIGTERM)
            p.wait(60)
            print(f"error: the cluster was not ready within {timeout:.0f} s; stopped it", file=sys.stderr)
            return 1
        time.sleep(0.2)
    print(f"export KUBECONFIG={lay.kubeconfig}", file=out)
    return 0


def _validate_labels(labels: list[str]) -> None:
    for item in labels:
        for kv in item.split(","):
            k, sep, v = kv.partition("=")
            if not sep or not k:
                raise ConfigError(f"--node-labels {item!r}: expected KEY=VALUE[,KEY=VALUE...], e.g. "
                                  "cloud.google.com/gke-nodepool=pool-a")


def _clean_leftovers(lay: Layout) -> None:
    """A directory whose supervisor was SIGKILLed: kill what may remain, reap pod namespaces, remove it."""
    from ..pods import reap_stale

    info = read_info(lay) or {}
    for pid in (info.get("processes") or {}).values():
        if ours(pid, lay):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    reap_stale()
    shutil.rmtree(lay.root, ignore_errors=True)


def down(state_dir: Path, timeout: float = 90.0, keep_logs: Path | None = None) -> int:
    """Stop the supervisor (which stops everything), then remove what is left; `keep_logs`:
    copy the components' logs there first."""
    lay = Layout(state_dir.expanduser().resolve())
    if not lay.root.exists():
        print(f"no cluster in {lay.root}", file=sys.stderr)
        return 0
    check_state_dir(lay)
    if keep_logs is not None and lay.logs.is_dir():  # before the supervisor removes them with the rest
        shutil.copytree(lay.logs, keep_logs, dirs_exist_ok=True)
    info = running(lay)
    if info:
        pid = info["supervisor"]
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while ours(pid, lay) and time.monotonic() < deadline:
            time.sleep(0.2)
        if ours(pid, lay):
            os.kill(pid, signal.SIGKILL)
    _clean_leftovers(lay)
    print(f"cluster in {lay.root} stopped and removed", file=sys.stderr)
    return 0


def status(state_dir: Path, out=sys.stdout) -> int:
    lay = Layout(state_dir.expanduser().resolve())
    info = running(lay) if lay.root.exists() else None
    if not info:
        print(f"no cluster running in {lay.root}", file=out)
        return 1
    print(f"cluster in {lay.root}: {'ready' if info.get('ready') else 'starting'}, API {info['server']}", file=out)
    print(f"versions {info['versions']}", file=out)
    for name, pid in info["processes"].items():
        print(f"  {name:<24} pid {pid:<8} {'running' if ours(pid, lay) else 'EXITED'}", file=out)
    print(f"export KUBECONFIG={lay.kubeconfig}", file=out)
    return 0


def env(state_dir: Path, out=sys.stdout) -> int:
    lay = Layout(state_dir.expanduser().resolve())
    if not running(lay):
        raise ConfigError(f"no cluster running in {lay.root}: start one with `jobset-runtime local cluster up`")
    print(f"export KUBECONFIG={lay.kubeconfig}", file=out)
    return 0
