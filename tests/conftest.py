import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture
def podinfo(tmp_path):
    """A copy of a recorded downward-API dir (plus its /etc/hosts) and the env that points at it."""

    def make(name: str, **env):
        src = DATA / "podinfo" / name
        dst = tmp_path / name
        shutil.copytree(src, dst)
        hosts = dst / "hosts"
        return {"JOBSET_RUNTIME_PODINFO": str(dst), "PATH": os.environ.get("PATH", ""), **env}, str(hosts)

    return make


@pytest.fixture
def cli_env():
    """Env for running the project's CLI as a real subprocess."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for k in list(env):
        if k.startswith("JOBSET_RUNTIME_") or k in ("JOB_COMPLETION_INDEX", "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"):
            del env[k]
    return env


