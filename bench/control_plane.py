"""The real control plane: `cluster up` to a Ready node and an accepted JobSet, and JobSets
end to end on it, each beside the embedded backend measured in the same run.

    PYTHONPATH=. python bench/control_plane.py [--pods 64]

Needs the binaries (`./dev control-plane`) and root (pod network namespaces); says so and
exits 0 otherwise.  Each figure is one measurement (`single`) beside its embedded-backend
baseline, recorded through bench/results.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from results import Results, Stat  # noqa: E402

from jobset_runtime import contract
from jobset_runtime.addresses import free_port
from jobset_runtime.local.controlplane import binaries


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(contract.ENV_PREFIX) or k == contract.CONTROL_PLANE_ENV}
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    e["PYTHONPATH"] = str(ROOT)
    return e


def local(*args, timeout=900) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "jobset_runtime", "local", *args], cwd=ROOT, env=env(),
                       capture_output=True, text=True, timeout=timeout)
    return time.monotonic() - t0, r


def trivial(name: str, pods: int) -> dict:
    return {"apiVersion": contract.JOBSET_API_VERSION, "kind": "JobSet", "metadata": {"name": name},
            "spec": {"replicatedJobs": [{"name": "w", "replicas": 1, "template": {"spec": {
                "parallelism": pods, "completions": pods, "backoffLimit": 0,
                "template": {"spec": {"restartPolicy": "Never", "containers": [
                    {"name": "main", "image": "ignored", "command": ["true"]}]}}}}}]}}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=64)
    a = ap.parse_args()
    ok, why = binaries.available()
    if not ok:
        print(f"skip: {why}")
        return 0
    if os.geteuid() != 0:
        print("skip: the node agent's pods need network namespaces (root)")
        return 0
    kubectl = str(Path(why) / "kubectl")
    res = Results(__file__)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 1. up -> Ready node -> a JobSet accepted (through the webhooks).
        state = tmp / "state"
        t0 = time.monotonic()
        up_s, r = local("cluster", "up", "--state-dir", str(state), "--port", str(free_port()))
        if r.returncode != 0:
            print(r.stderr)
            return 1
        f = tmp / "accept.yaml"
        f.write_text(yaml.safe_dump(trivial("accept", 1)))
        subprocess.run([kubectl, f"--kubeconfig={state / 'kubeconfig'}", "create", "-f", str(f)], check=True,
                       capture_output=True)
        accepted = time.monotonic() - t0
        local("cluster", "down", "--state-dir", str(state))
        base_s, rb = local("run", str(f), "--run-dir", str(tmp / "e0"))
        if rb.returncode != 0:
            print(f"embedded baseline failed: {rb.stdout[-2000:]}")
            return 1
        embedded = Stat.single(base_s, "s")
        what = "the embedded backend running that JobSet to Completed"
        res.add("controlplane.up", "`local cluster up` -> a Ready node with the JobSet webhooks answering",
                Stat.single(up_s, "s"), baseline=embedded, baseline_what=what, goal="< 20 s")
        res.add("controlplane.accepted", "`local cluster up` -> a JobSet accepted through the webhooks",
                Stat.single(accepted, "s"), baseline=embedded, baseline_what=what, goal="< 20 s")
        # 2. the demo, and N trivial pods, end to end on both backends.
        demo = ROOT / "examples" / "demo.yaml"
        many = tmp / "many.yaml"
        many.write_text(yaml.safe_dump(trivial("many", a.pods)))
        for name, label, path, goal in (("controlplane.demo", "the 2 x 2 demo", demo, "< 15 s"),
                                        ("controlplane.pods", f"{a.pods} trivial pods", many, "< 30 s")):
            c_s, rc = local("run", "--backend", "cluster", str(path), "--run-dir", str(tmp / "c"))
            e_s, re_ = local("run", str(path), "--run-dir", str(tmp / "e"))
            if rc.returncode or re_.returncode:
                print(f"{label}: failed (cluster {rc.returncode}, embedded {re_.returncode})\n{rc.stdout[-2000:]}")
                return 1
            res.add(name, f"{label} end to end on the real control plane (`local run --backend cluster`, "
                    "cluster start and stop included)", Stat.single(c_s, "s"), baseline=Stat.single(e_s, "s"),
                    baseline_what="the embedded backend, same file", goal=goal)
    stamp = Path(why) / "versions.json"
    if stamp.exists():
        info = json.loads(stamp.read_text())
        if "build_seconds" in info:
            # Recorded by the build itself (build.py), on this machine: its figure, not this run's.
            res.add("controlplane.cold_build", f"cold build of the binaries (`./dev control-plane`, {info['go']}, "
                    "empty Go caches, module downloads included), as the build recorded it",
                    Stat.single(info["build_seconds"] / 60, "min"), goal="fits CI's 90 min with the tests")
    res.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
