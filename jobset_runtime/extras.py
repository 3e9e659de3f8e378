"""The optional parts of the install: which extra brings which modules, and the error naming it.

The core install is what a pod needs (pyproject.toml); everything else comes with an extra, and a
command that needs one it lacks says which, exits 2 (ConfigError), and prints no traceback.
Standard library only: imported on the CLI's start-up path.
"""

from __future__ import annotations

import importlib.util

from .errors import ConfigError

# extra -> the modules it installs that the code imports (import names, not distribution names).
EXTRAS = {
    "manifests": ("yaml", "cryptography", "celpy"),
    "local": ("yaml", "dns"),
    "cluster": ("yaml", "dns", "lightkube", "cryptography"),
    "mpi": ("mpi4py",),
    "jax": ("jax",),
}


def missing(modules) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(extra: str, what: str, modules=None) -> None:
    """ConfigError naming `extra` when any of its modules (or just `modules`) is not installed."""
    absent = missing(EXTRAS[extra] if modules is None else modules)
    if absent:
        raise ConfigError(f"{what} needs the `{extra}` extra, which is not installed "
                          f"(missing {', '.join(absent)}): pip install 'jobset-runtime[{extra}]'")
