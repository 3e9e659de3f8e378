"""`jobset-runtime ... | head -1`: a reader that goes away ends the CLI quietly, as it ends kubectl
(killed by SIGPIPE: 141 in a shell), never with a BrokenPipeError traceback."""

import os
import signal
import subprocess
import sys

import pytest

POD = {"JOBSET_RUNTIME_JOBSET_NAME": "demo", "JOBSET_RUNTIME_REPLICATED_JOB": "worker",
       "JOBSET_RUNTIME_JOB_INDEX": "0", "JOB_COMPLETION_INDEX": "0", "JOBSET_RUNTIME_NAMESPACE": "default",
       "JOBSET_RUNTIME_TOPOLOGY": "worker:1x2"}


def run_into_closed_pipe(env, *args) -> subprocess.CompletedProcess:
    """The CLI with stdout a pipe whose reader is already gone: its first write fails."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "jobset_runtime", *args], env=env, stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)


@pytest.mark.parametrize("args", [
    ("manifest", "mpi", "--name", "pi", "--image", "i", "--workers", "64", "--", "python", "x.py"),
    ("local", "cluster", "status", "--state-dir", "{tmp}/none"),
    ("env", "--format", "shell"),
])
def test_a_closed_stdout_ends_the_cli_quietly(cli_env, tmp_path, args):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    p = run_into_closed_pipe({**cli_env, **POD}, *args)
    assert p.returncode == 128 + signal.SIGPIPE, p.stderr
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr and "Broken pipe" not in p.stderr, p.stderr


def test_the_same_commands_print_when_read(cli_env, tmp_path):
    """The check above is about the pipe: read, every one of them prints and succeeds."""
    p = subprocess.run([sys.executable, "-m", "jobset_runtime", "env", "--format", "shell"],
                       env={**cli_env, **POD}, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "JOBSET_RUNTIME_RANK=" in p.stdout, p.stderr
    p = subprocess.run([sys.executable, "-m", "jobset_runtime", "manifest", "mpi", "--name", "pi", "--image", "i",
                        "--workers", "64", "--", "python", "x.py"], env=cli_env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and "kind: JobSet" in p.stdout, p.stderr
