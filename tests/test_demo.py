"""The Quickstart's demo: examples/demo.yaml is what the generator makes, and it runs to Completed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobset_runtime import manifests
from jobset_runtime.manifests.cli import dump_yaml

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo.yaml"
ARGV = ["tpu-multislice", "--name", "demo", "--image", "ignored-by-the-local-runner", "--slices", "2",
        "--tpu-type", "v5p-16", "--max-restarts", "0", "--", "python", "examples/demo.py"]
PLACEHOLDER = "placeholder: `jobset-runtime manifest` makes a fresh one per JobSet"


def demo_text() -> str:
    docs = manifests.tpu_multislice(
        name="demo", image=ARGV[4], slices=2, tpu_type="v5p-16",
        max_restarts=0, command=["python", "examples/demo.py"], group_token=PLACEHOLDER)
    return ("# The Quickstart demo (`./dev demo`): 2 slices x 2 hosts, run with `jobset-runtime local run`.\n"
            "# Generated; regenerate with:\n#   jobset-runtime manifest " + " ".join(ARGV) + "\n"
            "# The group token is a placeholder for local runs: the command makes a fresh random one.\n"
            + dump_yaml(docs))


def test_demo_manifest_is_current():
    text = demo_text()
    if os.environ.get("UPDATE_GOLDEN") == "1":
        DEMO.write_text(text)
    assert DEMO.read_text() == text, f"{DEMO} is stale; rerun with UPDATE_GOLDEN=1"
    assert [d["kind"] for d in yaml.safe_load_all(text)] == ["Secret", "JobSet"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the demo's pods reach each other by name only in network namespaces (root)")
def test_demo_runs_to_completed(tmp_path):
    bindir = Path(sys.executable).parent
    assert (bindir / "jobset-run").exists(), "install the project into this environment first (./dev test does)"
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    r = subprocess.run([str(bindir / "jobset-runtime"), "local", "run", str(DEMO), "--timeout", "120",
                        "--run-dir", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = [line for line in r.stdout.splitlines() if "sum of ranks 6 (expected 6)" in line]
    assert len(lines) == 4, r.stdout[-3000:]
    for rank, (slice_id, worker) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        assert any(f"rank {rank}/4 on demo-slice-{slice_id}-{worker} (slice {slice_id}, worker {worker}," in line
                   for line in lines), lines
    assert "demo   Completed" in r.stdout
