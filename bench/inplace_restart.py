"""A whole in-place restart, end to end: from one rank's SIGKILL to every child running again.

64 pods on the local runner (network namespaces: run as root), each a real `jobset-run`
joined to the group channel.  Once every child is up, rank 5's child kills itself with
SIGKILL; every wrapper stops its child, they meet at the barrier, and each starts its child
again as epoch 1 in the same pod.  The figure is the kill to the last epoch-1 child's start
(goal < 3 s).  Baseline in the same run: the same kill handled by a JobSet restart instead
(no in-place restarts, maxRestarts 1), timed to the last child of restart-attempt 1, by the
real JobSet v0.12 controller on the real control plane (`local run --backend cluster`,
docs/control-plane.md) when its binaries are built.  This machine's node agent starts pods
without image pulls or a scheduler queue of other work, so a cluster adds its own time
(minutes at scale, REFERENCE.md).  A second figure is the same restart by this project's
embedded runner (its Recreate deletes every pod and waits until they are gone).

    python bench/inplace_restart.py [--pods 64]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import Results, Stat  # noqa: E402

from jobset_runtime import manifests  # noqa: E402
from jobset_runtime.manifests.cli import dump_yaml  # noqa: E402

BIN = Path(sys.executable).parent
VICTIM = 5  # the rank whose child is killed (the last one in a smaller group)
PROGRAM = """
import os, signal, sys, time
marks, n, victim, key = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rank, round_ = int(os.environ["JOBSET_RUNTIME_RANK"]), int(os.environ[key])
open(os.path.join(marks, f"start-{round_}-{rank}"), "w").write(repr(time.time()))
if round_ == 0:
    if rank == victim:
        while len([f for f in os.listdir(marks) if f.startswith("start-0-")]) < n:
            time.sleep(0.01)
        open(os.path.join(marks, "kill"), "w").write(repr(time.time()))
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(600)
"""


def one(pods: int, in_place: bool, backend: str = "embedded") -> float:
    with tempfile.TemporaryDirectory() as tmp:
        marks = Path(tmp) / "marks"
        marks.mkdir()
        key = "JOBSET_RUNTIME_RESTART" if in_place else "JOBSET_RUNTIME_RESTART_ATTEMPT"
        docs = manifests.jax(
            name="ipr", image="ignored", hosts=pods, max_restarts=0 if in_place else 1,
            in_place_restarts=1 if in_place else 0, group_token="bench-token-0123456789abcdef",
            command=[sys.executable, "-c", PROGRAM, str(marks), str(pods), str(min(VICTIM, pods - 1)), key])
        path = Path(tmp) / "ipr.yaml"
        path.write_text(dump_yaml(docs))
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        r = subprocess.run([str(BIN / "jobset-runtime"), "local", "run", "--backend", backend, str(path),
                            "--timeout", "300", "--run-dir", str(Path(tmp) / "run")], env=env, capture_output=True,
                           text=True)
        if r.returncode != 0:
            sys.exit(f"the run failed:\n{r.stdout[-3000:]}{r.stderr[-2000:]}")
        killed = float((marks / "kill").read_text())
        starts = [float((marks / f"start-1-{rank}").read_text()) for rank in range(pods)]
        return max(starts) - killed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root: the pods run in network namespaces")
    from jobset_runtime.local.controlplane import binaries

    res = Results(__file__)
    real = binaries.available()[0]
    in_place, recreate, controller = [], [], []
    for _ in range(a.runs):  # interleaved: machine noise hits all alike
        in_place.append(one(a.pods, True))
        recreate.append(one(a.pods, False))
        if real:
            controller.append(one(a.pods, False, "cluster"))
    embedded = dict(baseline=Stat.median(recreate, "s"), baseline_what="the embedded runner's Recreate (every pod "
                    "deleted and waited for, then created again)")
    base = embedded if not real else dict(
        baseline=Stat.median(controller, "s"), baseline_what="a JobSet restart by the real JobSet v0.12 controller "
        "on the real control plane (`local run --backend cluster`, maxRestarts 1)")
    res.add(f"restart.inplace{a.pods}", f"in-place restart, {a.pods} pods on the local runner (`jobset-run --restarts 1`): "
            "SIGKILL of one child -> every child running again in the same pods", Stat.median(in_place, "s"),
            spread=[Stat.max(in_place, "s")], goal="< 3 s", **base)
    res.add(f"restart.recreate{a.pods}", f"JobSet restart, {a.pods} pods, embedded runner's Recreate: SIGKILL of "
            "one child -> every child of restart-attempt 1 running", Stat.median(recreate, "s"),
            spread=[Stat.max(recreate, "s")])
    if real:
        res.add(f"restart.controller{a.pods}", f"JobSet restart, {a.pods} pods, the real JobSet controller on the "
                "real control plane: SIGKILL of one child -> every child of restart-attempt 1 running",
                Stat.median(controller, "s"), spread=[Stat.max(controller, "s")])
    else:
        res.note("the control-plane binaries are not built: the baseline is the embedded runner's Recreate")
    res.write()


if __name__ == "__main__":
    main()
