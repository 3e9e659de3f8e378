"""What `pip install jobset-runtime` puts into a training image: the core's installed size.

Figure: the wheel installed alone (the core: tenacity is its one dependency) into a fresh venv,
bytes added to the venv over the empty venv (pip itself, the same Python).  Beside it, in the
same run: the same wheel with the `manifests` and `local` extras (PyYAML, cryptography,
cel-python, dnspython), what every image got before the core was made slim.  Installs from the
pip cache or PyPI.

    python bench/install_size.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import Results, Stat  # noqa: E402


def tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def installed_bytes(tmp: Path, requirement: str | None) -> tuple[int, list[str]]:
    """Bytes a fresh venv grows by when `requirement` is installed, and the packages it holds."""
    env_dir = tmp / ("empty" if requirement is None else f"venv{len(list(tmp.iterdir()))}")
    venv.create(env_dir, with_pip=True)
    before = tree_bytes(env_dir)
    py = str(env_dir / "bin" / "python")
    if requirement is not None:
        subprocess.run([py, "-m", "pip", "install", "-q", requirement], check=True)
    listed = subprocess.run([py, "-m", "pip", "list", "--format", "freeze"], check=True, capture_output=True,
                            text=True).stdout.split()
    return tree_bytes(env_dir) - before, sorted(p.split("==")[0] for p in listed)


def main() -> None:
    res = Results(__file__)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dist = tmp / "dist"
        subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)], check=True,
                       capture_output=True)
        wheel = next(dist.glob("jobset_runtime-*.whl"))
        work = tmp / "venvs"
        work.mkdir()
        core, core_pkgs = installed_bytes(work, str(wheel))
        full, full_pkgs = installed_bytes(work, f"{wheel}[manifests,local]")
        res.add("install.core", f"`pip install jobset-runtime` into a fresh venv: bytes added "
                f"({', '.join(p for p in core_pkgs if p not in ('pip', 'setuptools'))})",
                Stat.single(core / 1e6, "MB"), baseline=Stat.single(full / 1e6, "MB"),
                baseline_what="the same wheel with the manifests and local extras (what every image got before)")
    res.write()


if __name__ == "__main__":
    main()
