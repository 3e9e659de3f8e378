"""JobSet manifests that give pods exactly what the runtime reads.

Each kind is a function returning a list of plain-dict documents (the JobSet, with
any Secret it needs placed before it), already checked against the API server's,
the child Jobs' and the runtime's verdicts.  `validate` gives them (defaults,
schema, webhook and runtime hold the parts); `cli.main` is `jobset-runtime manifest`.
"""

from .jax import jax
from .mpi import mpi
from .torch import torch
from .tpu_multislice import tpu_multislice

KINDS = {"tpu-multislice": tpu_multislice, "mpi": mpi, "jax": jax, "torch": torch}

__all__ = ["KINDS", "jax", "mpi", "torch", "tpu_multislice"]
