"""The generated `mpi` manifest run by the local JobSet runner (`jobset-runtime local run`).

1 launcher + 3 workers x 2 slots; pods in their own network, UTS and mount
namespaces with real DNS; the Secret mounted where the manifest says; real mpirun.
"""

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import mpifixtures as c
from jobset_runtime import manifests


def _bin(tmp_path: Path) -> Path:
    """`jobset-run` of this checkout, as the image would have it on PATH."""
    d = tmp_path / "bin"
    d.mkdir()
    (d / "jobset-run").write_text(f"#!{sys.executable}\nimport sys\nfrom jobset_runtime.cli import run_main\n"
                                  "sys.exit(run_main())\n")
    (d / "jobset-run").chmod(0o755)
    return d


def run_manifest(tmp_path, mpi: c.Mpi, program: list, *, timeout=90, launcher_args=(), **options):
    from jobset_runtime.local.pods import netns_available

    ok, why = netns_available()
    if not ok:
        pytest.skip(f"the local runner's namespaces are unavailable: {why}")
    docs = manifests.mpi(name="pi", image="unused", command=program, workers=3, slots_per_worker=2, mpi=mpi.family,
                           **options)
    if launcher_args:  # options the generator does not expose, put before the launcher's `--`
        for doc in docs:
            for rj in doc.get("spec", {}).get("replicatedJobs", []):
                if rj["name"] == "launcher":
                    cmd = rj["template"]["spec"]["template"]["spec"]["containers"][0]["command"]
                    at = cmd.index("launcher") + 1
                    cmd[at:at] = list(launcher_args)
    path = tmp_path / "mpi.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSET_RUNTIME_")}
    env.update(mpi.env)
    env["PATH"] = os.pathsep.join([str(_bin(tmp_path)), os.path.dirname(mpi.mpirun),
                                  os.path.join(sys.prefix, "bin"), env.get("PATH", "")])
    env["PYTHONPATH"] = str(c.ROOT)
    return subprocess.run([sys.executable, "-m", "jobset_runtime.local.cli", "run", str(path),
                           "--run-dir", str(tmp_path / "run"), "--timeout", str(timeout - 10)],
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("which, by", [("openmpi", "ip"), ("mpich", "ip"), ("openmpi", "fqdn"), ("mpich", "fqdn")])
def test_generated_manifest_runs_allreduce(tmp_path, which, by):
    mpi = c.need(c.openmpi() if which == "openmpi" else c.mpich(), "Open MPI" if which == "openmpi" else "MPICH")
    r = run_manifest(tmp_path, mpi, ["python", c.PROG], launcher_args=["--hostfile-by", by])
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    line = next(l for l in r.stdout.splitlines() if "RESULT " in l)
    result = json.loads(line.split("RESULT ", 1)[1])
    assert result["size"] == 6 and result["sum"] == 21
    assert collections.Counter(result["hosts"]) == {f"pi-worker-0-{i}": 2 for i in range(3)}
    status = r.stdout.split("NAME")[-1]
    assert "Completed" in status, r.stdout[-3000:]


def _at(stdout: str, needle: str) -> float:
    """The runner's `[   1.96s] ...` time of the first line holding `needle`."""
    line = next(l for l in stdout.splitlines() if needle in l and l.startswith("["))
    return float(line[1:line.index("s]")])


VICTIM = "pi-worker-0-1"


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """One JobSet (maxRestarts 0) in which the pod of worker 1 is SIGKILLed 1 s into the run."""
    mpi = c.need(c.openmpi(), "Open MPI")
    return run_manifest(tmp_path_factory.mktemp("killed"), mpi, ["python", c.PROG, "--kill-pod", VICTIM, "1.0"],
                        max_restarts=0)


def test_killed_worker_fails_the_jobset_fast_naming_the_worker(killed_run):
    out = killed_run.stdout
    assert killed_run.returncode != 0, out[-3000:]
    status = out.split("NAME")[-1]
    assert "Failed" in status.splitlines()[1], status
    # The launcher says which worker went away, and ends within 5 s of it.
    assert any("pi-launcher-0-0" in l and f"MPI worker {VICTIM} went away without being stopped" in l for l in out.splitlines()), out[-3000:]
    assert _at(out, "pod pi-launcher-0-0") - _at(out, f"pod {VICTIM}") < 5, out[-3000:]


def test_killed_worker_named_in_the_launchers_termination_message(killed_run):
    msg = next(l for l in killed_run.stdout.splitlines() if "pod pi-launcher-0-0" in l and "termination message" in l)
    assert f"{VICTIM} went away without being stopped" in msg, msg
