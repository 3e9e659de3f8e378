"""One cluster's state directory: what is in it (cluster.json), whether its processes
still run, and whether it is ours to use (made by these versions)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ... import contract
from ...errors import ConfigError
from .components import Layout


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "jobset-runtime" / "cluster"


def alive(pid: int) -> bool:
    from ..pods import _alive  # a zombie is not alive

    return _alive(pid)


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def read_info(lay: Layout) -> dict | None:
    try:
        return json.loads(lay.info.read_text())
    except (OSError, ValueError):
        return None


def ours(pid: int, lay: Layout) -> bool:
    """A recorded pid is still one of this cluster's processes (not a reused pid)."""
    return alive(pid) and str(lay.root) in cmdline(pid)


def check_state_dir(lay: Layout) -> dict | None:
    """The cluster.json of a directory made by these versions, None for an empty one;
    a ConfigError for anything else."""
    if not lay.root.exists():
        return None
    if not lay.root.is_dir():
        raise ConfigError(f"--state-dir {lay.root}: not a directory")
    info = read_info(lay)
    if info is None:
        if {p.name for p in lay.root.iterdir()} - {"logs", "lock"}:  # a supervisor that failed early leaves its log
            raise ConfigError(f"--state-dir {lay.root}: not empty and not a cluster directory (no {lay.info.name}); "
                              "choose another --state-dir or remove it")
        return None
    if info.get("versions") != contract.CONTROL_PLANE_VERSIONS:
        raise ConfigError(f"--state-dir {lay.root} holds a cluster of other versions ({info.get('versions')}; this is "
                          f"{contract.CONTROL_PLANE_VERSIONS}): run `jobset-runtime local cluster down --state-dir "
                          f"{lay.root}` with the jobset-runtime that made it, or choose another --state-dir")
    return info


def running(lay: Layout) -> dict | None:
    info = read_info(lay)
    if info and ours(info.get("supervisor", 0), lay):
        return info
    return None
