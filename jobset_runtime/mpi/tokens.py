"""Where the launcher-worker channel's secret comes from."""

from __future__ import annotations

import os

from .. import contract
from ..errors import ConfigError
from ..group.wire import read_token
from . import channel


def token_path(env=os.environ) -> str:
    return env.get(contract.MPI_TOKEN_FILE_ENV) or os.path.join(contract.SSH_DIR, contract.SSH_PRIVATE_KEY)


def load_key(env=os.environ) -> bytes:
    """The channel key, derived from the token file (the ssh private key of the JobSet's Secret by default)."""
    path = token_path(env)
    if os.path.isfile(path) and not os.access(path, os.R_OK):
        raise ConfigError(
            f"cannot read the MPI token {path}: permission denied (running as uid {os.getuid()}, groups "
            f"{sorted(set(os.getgroups()) | {os.getgid()})}). Secret files are root-owned: give the pod a "
            "securityContext.fsGroup and the Secret volume defaultMode 0440 (the `mpi` manifest sets fsGroup "
            f"{contract.MPI_FS_GROUP}, Dockerfile.mpi's group), or run as root")
    token = read_token(path, "MPI token", f"mount the JobSet's ssh Secret at {contract.SSH_DIR} (the `mpi` manifest "
                       f"does), or point {contract.MPI_TOKEN_FILE_ENV} at a file holding at least 16 random bytes, "
                       "the same in the launcher and every worker")
    return channel.derive_key(token)
