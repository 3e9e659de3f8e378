"""Where the launcher-worker channel's secret comes from."""

from __future__ import annotations

import os

from .. import contract
from ..errors import ConfigError
from . import channel


def token_path(env=os.environ) -> str:
    return env.get(contract.MPI_TOKEN_FILE_ENV) or os.path.join(contract.SSH_DIR, contract.SSH_PRIVATE_KEY)


def load_key(env=os.environ) -> bytes:
    """The channel key, derived from the token file (the ssh private key of the JobSet's Secret by default)."""
    path = token_path(env)
    try:
        with open(path, "rb") as f:
            token = f.read().strip()
    except OSError as e:
        raise ConfigError(
            f"cannot read the MPI token {path}: {e.strerror}. Mount the JobSet's ssh Secret at "
            f"{contract.SSH_DIR} (the `mpi` manifest does), or point {contract.MPI_TOKEN_FILE_ENV} at a file "
            "holding at least 16 random bytes, the same in the launcher and every worker"
        ) from None
    if len(token) < 16:
        raise ConfigError(f"the MPI token in {path} is {len(token)} bytes; use at least 16 random bytes")
    return channel.derive_key(token)
