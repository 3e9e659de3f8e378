"""`python -m jobset_runtime.mpi` as a process: errors for people, timeouts, exit codes."""

import os
import subprocess
import sys

import mpifixtures as c


def _run(args, tmp_path, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith("JOBSET_RUNTIME_")}
    base.update(PYTHONPATH=str(c.ROOT), JOBSET_RUNTIME_TERMINATION_LOG=str(tmp_path / "termination"), **env)
    return subprocess.run([sys.executable, "-m", "jobset_runtime.mpi", *args], env=base, capture_output=True,
                          text=True, timeout=60)


def test_worker_without_a_token_says_what_to_mount(tmp_path):
    r = _run(["worker"], tmp_path, JOBSET_RUNTIME_MPI_TOKEN_FILE=str(tmp_path / "missing"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "cannot read the MPI token" in r.stderr and "Secret" in r.stderr
    assert "MPI token" in (tmp_path / "termination").read_text()


def test_worker_leaves_when_no_launcher_comes(tmp_path):
    token = tmp_path / "token"
    token.write_text("x" * 32)
    r = _run(["worker", "--launcher-timeout", "1"], tmp_path, JOBSET_RUNTIME_MPI_TOKEN_FILE=str(token),
             JOBSET_RUNTIME_MPI_PORT="0")
    assert r.returncode == 69, r.stderr
    assert "no launcher connected within 1s" in (tmp_path / "termination").read_text()


def test_launcher_needs_the_topology(tmp_path):
    token = tmp_path / "token"
    token.write_text("x" * 32)
    r = _run(["launcher", "--mpi", "openmpi", "--", "python", "t.py"], tmp_path,
             JOBSET_RUNTIME_MPI_TOKEN_FILE=str(token), JOBSET_RUNTIME_JOBSET_NAME="js",
             JOBSET_RUNTIME_REPLICATED_JOB="launcher", JOBSET_RUNTIME_JOB_INDEX="0", JOBSET_RUNTIME_POD_INDEX="0",
             JOBSET_RUNTIME_NAMESPACE="ns", JOBSET_RUNTIME_TOPOLOGY="launcher:1x1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no replicated job 'worker'" in r.stderr and "--workers-job" in r.stderr


def test_unknown_role():
    r = subprocess.run([sys.executable, "-m", "jobset_runtime.mpi", "nope"], env={**os.environ, "PYTHONPATH": str(c.ROOT)},
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "launcher|worker|agent" in r.stderr


def test_launcher_refuses_a_doubled_separator_before_running_anything(tmp_path):
    # `manifest mpi ... -- -- OPTS -- PROG` used to run `-x` as the program, silently.
    r = _run(["launcher", "--mpi", "openmpi", "--", "--", "-x", "A", "--", "python", "t.py"], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "doubled separator" in r.stderr
    assert "launcher [options] -- MPIRUN-OPTIONS -- PROGRAM ARGS" in r.stderr
    assert "doubled separator" in (tmp_path / "termination").read_text()
