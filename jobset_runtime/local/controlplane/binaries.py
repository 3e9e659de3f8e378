"""Where the control plane's binaries are: JOBSET_RUNTIME_CONTROL_PLANE, else the build cache."""

from __future__ import annotations

import os
from pathlib import Path

from ... import contract
from ...errors import ConfigError
from . import build


def missing_in(d: Path) -> list[str]:
    names = [*contract.CONTROL_PLANE_BINARIES, contract.JOBSET_CRD_FILE, contract.JOBSET_WEBHOOKS_FILE]
    return [n for n in names if not (d / n).is_file()]


def locate() -> Path:
    """The directory holding every binary, the CRD and the webhook manifests, or a
    ConfigError (exit 2) naming the build command and the env var."""
    given = os.environ.get(contract.CONTROL_PLANE_ENV)
    if given:
        d = Path(given).expanduser()
        missing = missing_in(d)
        if missing:
            raise ConfigError(f"{contract.CONTROL_PLANE_ENV}={given}: missing {', '.join(missing)}; it must hold "
                              f"{', '.join(contract.CONTROL_PLANE_BINARIES)}, {contract.JOBSET_CRD_FILE} and "
                              f"{contract.JOBSET_WEBHOOKS_FILE} (or unset it and run "
                              f"`{contract.CONTROL_PLANE_BUILD_COMMAND}`)")
        return d
    d = build.cached_dir()
    if not build.is_complete(d):
        raise ConfigError(f"the control plane's binaries are not built ({d} is missing or incomplete): run "
                          f"`{contract.CONTROL_PLANE_BUILD_COMMAND}` (Go 1.26+; a quarter of an hour the first time on 2 cores), "
                          f"or set {contract.CONTROL_PLANE_ENV}=DIR to a directory of prebuilt binaries")
    return d


def available() -> tuple[bool, str]:
    """(True, dir) or (False, why): for tests that need the real control plane."""
    try:
        return True, str(locate())
    except ConfigError as e:
        return False, str(e)
