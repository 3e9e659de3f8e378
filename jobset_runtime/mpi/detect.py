"""Which MPI the installed mpirun belongs to: runs `mpirun --version` (hostfile.parse_version reads it)."""

from __future__ import annotations

import subprocess

from ..errors import ConfigError
from .hostfile import Implementation, parse_version


def detect(mpirun: str = "mpirun", env: dict | None = None, family: str = "auto") -> Implementation:
    """Run `mpirun --version` and parse it; `family` (from --mpi) is checked against the output."""
    try:
        out = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=30, env=env, check=False)
    except FileNotFoundError:
        raise ConfigError(f"{mpirun!r} not found: install an MPI in the image or pass --mpirun PATH") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"`{mpirun} --version` did not finish in 30 s: is {mpirun!r} an mpirun?") from None
    return parse_version(out.stdout + out.stderr, family)
