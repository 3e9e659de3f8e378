"""Where the launcher-worker channel's secret comes from."""

from __future__ import annotations

import os

from .. import contract
from ..group.wire import read_token
from . import channel


def token_path(env=os.environ) -> str:
    return env.get(contract.MPI_TOKEN_FILE_ENV) or os.path.join(contract.SSH_DIR, contract.SSH_PRIVATE_KEY)


def load_key(env=os.environ) -> bytes:
    """The channel key, derived from the token file (the ssh private key of the JobSet's Secret by default)."""
    path = token_path(env)
    token = read_token(path, "MPI token", f"mount the JobSet's ssh Secret at {contract.SSH_DIR} (the `mpi` manifest "
                       f"does), or point {contract.MPI_TOKEN_FILE_ENV} at a file holding at least 16 random bytes, "
                       "the same in the launcher and every worker")
    return channel.derive_key(token)
