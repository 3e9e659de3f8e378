"""Dockerfile.mpi cannot be built here: check what can be checked without docker."""

import re
import subprocess

import mpifixtures as c
from jobset_runtime import contract

TEXT = (c.ROOT / "Dockerfile.mpi").read_text()


def _instructions(name):
    return [line.split(None, 1)[1] for line in TEXT.splitlines() if line.startswith(name + " ")]


def test_every_copied_file_exists():
    copies = _instructions("COPY")
    assert copies
    for line in copies:
        *sources, _dest = line.split()
        for src in sources:
            assert (c.ROOT / src).exists(), f"Dockerfile.mpi copies {src}, which is not in the repository"


def test_entrypoint_is_ours_and_runs_the_mpi_roles(tmp_path):
    (entry,) = _instructions("ENTRYPOINT")
    assert entry == '["/usr/local/bin/mpi-entrypoint"]'
    assert "launchers/mpi-entrypoint /usr/local/bin/mpi-entrypoint" in TEXT
    # Run the entrypoint with a stand-in jobset-run on PATH that prints what it was given.
    (tmp_path / "jobset-run").write_text("#!/bin/sh\nprintf '%s\\n' \"$@\"\n")
    (tmp_path / "jobset-run").chmod(0o755)
    out = subprocess.run([str(c.ROOT / "launchers" / "mpi-entrypoint"), "launcher", "--", "python", "a b.py", "$HOME"],
                         env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["--wait", "none", "--", "python", "-m", "jobset_runtime.mpi", "launcher",
                                       "--", "python", "a b.py", "$HOME"]
    out = subprocess.run([str(c.ROOT / "launchers" / "mpi-entrypoint"), "worker", "--transport", "ssh"],
                         env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["--wait", "none", "--exec", "--", "python", "-m", "jobset_runtime.mpi",
                                       "worker", "--transport", "ssh"]


def test_non_root_with_the_contract_paths_and_ports():
    (user,) = _instructions("USER")
    assert user.strip() not in ("root", "0")
    assert "/etc/jobset-runtime/sshd_config" == contract.SSHD_CONFIG and contract.SSHD_CONFIG in TEXT
    assert re.search(rf"EXPOSE .*\b{contract.MPI_PORT}\b", TEXT) and re.search(rf"EXPOSE .*\b{contract.SSH_PORT}\b", TEXT)
    sshd = (c.ROOT / "launchers" / "sshd_config").read_text()
    assert f"Port {contract.SSH_PORT}" in sshd and "PasswordAuthentication no" in sshd
