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

from jobset_runtime import contract
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


DEMO_ARGS = ("--initialization-timeout", "90", "--timeout", "80", "--shutdown-timeout", "30")


def run_demo(tmp_path: Path, *local_args: str, demo_args=DEMO_ARGS, runner_args=(), timeout=150,
             **options) -> tuple[subprocess.CompletedProcess, dict]:
    """Generate the `jax` JobSet (`options` go to the generator; `runner_args` are put in
    `jobset-run`'s options, before its `--`) and run it on the local runner."""
    docs = jax_manifest(
        name=NAME, image="ignored", replicas=2, hosts=2,
        command=[sys.executable, str(ROOT / "examples" / "jax_cpu_demo.py"), "--devices", "2", *demo_args],
        **options,
    )
    if runner_args:
        for doc in docs:
            for rj in doc.get("spec", {}).get("replicatedJobs", []):
                cmd = rj["template"]["spec"]["template"]["spec"]["containers"][0]["command"]
                at = cmd.index("--")
                cmd[at:at] = list(runner_args)
    path = tmp_path / "jax.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSET_RUNTIME_") and not k.startswith("JAX_")}
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", PATH=f"{_bin_dir(tmp_path)}{os.pathsep}{env.get('PATH', '')}")
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "jobset_runtime", "local", "run", str(path), "--run-dir", str(run_dir),
                             "--timeout", str(timeout), *local_args], check=False, env=env, capture_output=True, text=True,
                            timeout=timeout + 50)
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


MISSING = f"{NAME}-worker-1-1"
INIT_TIMEOUT, OURS = 40, 10


def _events(stdout: str, what: str) -> list[tuple[float, str, str]]:
    """The runner's `[  10.42s] pod <name><what><rest>` lines: (time, pod name, rest)."""
    out = []
    for line in stdout.splitlines():
        if line.startswith("[") and "s] pod " in line and what in line:
            at = float(line[1:line.index("s]")])
            pod, rest = line.split("s] pod ", 1)[1].split(what, 1)
            out.append((at, pod, rest))
    return out


@pytest.mark.parametrize("variant", ["fail-fast", "no-fail-fast"])
def test_peer_that_never_comes_is_named_before_jax_aborts(tmp_path, variant):
    """Pod `jaxdemo-worker-1-1` is held back 600 s (never scheduled, for this run); the
    runner's own deadline is far above JAX's initialization_timeout (40 s), so JAX's abort
    (SIGABRT, 134) would show if our deadline (10 s) did not come first.

    fail-fast: the generated manifest as it is; the wrappers' gang start is what waits, and
    its deadline (`--group-timeout`, which the generator does not expose) is set to 10 s.
    no-fail-fast: no group channel, so `jobset_runtime.jax.initialize()` itself waits
    (timeout 10 s) inside the program.  Its message names missing hosts from what that
    process watches: the coordinator the whole world, a slice worker its slice.  Slice 0's
    worker has a complete slice and can only say that a process has not joined (checked on
    loopback in test_distributed.py), so it starts 3 s late and the pods that can name the
    missing one reach their deadline first.

    maxRestarts 0: the first pod to exit fails its Job and the JobSet, and the controller
    stops the other pods (SIGTERM, 143) as the real one does, possibly before their own
    deadline; so every pod's termination message is our error naming the missing pod (69)
    or the wrapper's account of that stop (143), never an abort.  (With fail-fast, a wrapper
    stopped while still in the gang start ends without a termination message.)
    """
    fail_fast = variant == "fail-fast"
    skew = ["--skew", f"{MISSING}=600"] + ([] if fail_fast else ["--skew", f"{NAME}-worker-0-1=3"])
    result, logs = run_demo(
        tmp_path, *skew, timeout=120, max_restarts=0, fail_fast=fail_fast,
        demo_args=("--initialization-timeout", str(INIT_TIMEOUT), "--timeout", str(OURS)),
        runner_args=("--group-timeout", str(OURS)) if fail_fast else ())
    out = result.stdout
    everything = out + result.stderr + "".join(logs.values())
    assert result.returncode != 0, out[-3000:]
    status = out.split("NAME")[-1]
    assert "Failed" in status.splitlines()[1], status
    assert f"pod {MISSING}" not in out  # never started
    assert "SIGABRT" not in everything and "code 134" not in everything and "=134" not in everything, out[-3000:]

    failed = _events(out, " failed (exit codes ")
    assert failed, out[-3000:]
    at, first, codes = failed[0]
    assert codes.startswith("main=69)"), failed  # contract.EXIT_PEERS_TIMEOUT
    assert at < INIT_TIMEOUT, failed
    assert contract.EXIT_PEERS_TIMEOUT == 69

    started = {pod for _, pod, _ in _events(out, " started, ip ")}
    assert len(started) == 3, out[-3000:]
    messages = dict((pod, msg) for _, pod, msg in _events(out, ": termination message: "))
    assert first in messages, out[-3000:]
    assert started <= set(messages), out[-3000:]  # every started pod says why it ended
    for pod, msg in messages.items():
        if "killed by SIGTERM (exit code 143)" in msg or msg == "stopped by SIGTERM before the command started":
            assert pod != first  # stopped by the controller once the JobSet failed
            continue
        assert MISSING in msg, (pod, msg)
        if fail_fast:
            # From the coordinator's last report, whether it was still up at this pod's
            # deadline or had just given up itself (then it is gone: connection refused).
            assert ("gang start: after 10 s, 1 of 4 group members had not joined" in msg
                    or "when last connected, 1 of 4 members had not joined" in msg), msg
        else:
            assert "jax.distributed did not start within 10s" in msg, msg
            assert "have no DNS record, so their pods have not started" in msg, msg
