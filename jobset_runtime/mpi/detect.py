"""Which MPI the installed mpirun belongs to: runs `mpirun --version` (hostfile.parse_version reads it)."""

from __future__ import annotations

import subprocess

from ..errors import ConfigError
from .hostfile import Implementation, parse_version


def missing(mpirun: str) -> ConfigError:
    return ConfigError(f"{mpirun!r} not found: install an MPI in the image or pass --mpirun PATH")


def detect(mpirun: str = "mpirun", env: dict | None = None, family: str = "auto") -> Implementation:
    """Run `mpirun --version` and parse it; `family` (from --mpi) is checked against the output."""
    try:
        out = subprocess.run([mpirun, "--version"], capture_output=True, text=True, timeout=30, env=env, check=False)
    except FileNotFoundError:
        raise missing(mpirun) from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"`{mpirun} --version` did not finish in 30 s: is {mpirun!r} an mpirun?") from None
    text = out.stdout + out.stderr
    if out.returncode != 0:
        # A broken install (Intel's script without mpiexec.hydra on PATH, a missing library).
        first = text.strip().splitlines()[0][:200] if text.strip() else "nothing"
        raise ConfigError(f"`{mpirun} --version` failed with exit code {out.returncode} ({first}): "
                          "check the MPI installation in the image")
    return parse_version(text, family)
