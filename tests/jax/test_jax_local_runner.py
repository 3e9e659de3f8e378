"""End to end: a generated `jax` JobSet (2 slices x 2 hosts) on the local runner, real jax.distributed on CPU.

Pods are processes in network namespaces of their own, with real DNS; the
manifest's own command (`jobset-run --wait coordinator -- python demo`) runs.
"""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("jax", reason="jax is a test dependency of this area (pip install jax)")

from jobset_runtime.local.pods import netns_available
from jobset_runtime.manifests import jax as jax_manifest

ROOT = Path(__file__).resolve().parents[2]
NAME = "jaxdemo"

_ok, _why = netns_available()
pytestmark = [pytest.mark.netns, pytest.mark.skipif(not _ok, reason=f"network namespaces unavailable: {_why}")]


def _bin_dir(tmp_path: Path) -> Path:
    """`jobset-run` on PATH as the image would have it (the console script of this checkout)."""
    d = tmp_path / "bin"
    d.mkdir()
    shim = d / "jobset-run"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -m jobset_runtime run "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    return d


def run_demo(tmp_path: Path, *local_args: str) -> tuple[subprocess.CompletedProcess, dict]:
    docs = jax_manifest(
        name=NAME, image="ignored", replicas=2, hosts=2,
        command=[sys.executable, str(ROOT / "examples" / "jax_cpu_demo.py"), "--devices", "2",
                 "--initialization-timeout", "90", "--timeout", "80", "--shutdown-timeout", "30"],
    )
    path = tmp_path / "jax.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSET_RUNTIME_") and not k.startswith("JAX_")}
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", PATH=f"{_bin_dir(tmp_path)}{os.pathsep}{env.get('PATH', '')}")
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "jobset_runtime", "local", "run", str(path), "--run-dir", str(run_dir),
                             "--timeout", "150", *local_args], check=False, env=env, capture_output=True, text=True, timeout=200)
    logs = {}
    for log in sorted(run_dir.glob("*.log")):
        logs[log.name] = log.read_text(errors="replace")
    return result, logs


def reports(logs: dict) -> dict:
    out = {}
    for name, text in logs.items():
        for line in text.splitlines():
            start = line.find('{"process_id"')
            if start >= 0:  # other output of the pod may follow on the same line of its log
                out[name] = json.JSONDecoder().raw_decode(line[start:])[0]
    return out


def check(result, logs):
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}\n" + "\n".join(
        f"--- {n}\n{t[-2000:]}" for n, t in logs.items())
    rep = reports(logs)
    assert len(rep) == 4, list(logs)
    ids = []
    for name, r in rep.items():
        assert name.startswith(f"{NAME}-worker-{r['slice_id']}-{r['worker_id']}-"), name
        assert r["ok"] is True and r["psum"] == r["expected_psum"] == 36.0
        assert r["process_index"] == r["process_id"] == r["slice_id"] * 2 + r["worker_id"]
        ids.append(r["process_id"])
    assert sorted(ids) == [0, 1, 2, 3]
    return rep


def test_generated_jobset_runs_psum_on_every_process(tmp_path):
    result, logs = run_demo(tmp_path)
    check(result, logs)


def test_coordinator_pod_10s_late_still_succeeds(tmp_path):
    result, logs = run_demo(tmp_path, "--skew", f"{NAME}-worker-0-0=10")
    check(result, logs)
    # One pod per hostname and one run each: no restart happened.
    assert len(logs) == 4
    for name, text in logs.items():
        assert text.count('{"process_id"') == 1, name
