"""Helpers for the local runner's tests: JobSet builders, a CLI runner, leftover checks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def netns_unavailable() -> str:
    """Why the namespace tests cannot run here ("" when they can)."""
    from jobset_runtime.local.pods import netns_available

    ok, why = netns_available()
    return "" if ok else why


def jobset(name: str, rjobs: list, **spec) -> dict:
    """A JobSet with `rjobs` = [(name, replicas, pods per job, container dict, extra job spec)]."""
    out = []
    for rj in rjobs:
        rname, replicas, pods, container = rj[:4]
        job_extra = rj[4] if len(rj) > 4 else {}
        pod_extra = rj[5] if len(rj) > 5 else {}
        container = {"name": "main", "image": "ignored", **container}
        job_spec = {"parallelism": pods, "completions": pods, **job_extra,
                    "template": {"spec": {"containers": [container], **pod_extra}}}
        out.append({"name": rname, "replicas": replicas, "template": {"spec": job_spec}})
    return {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": {"name": name},
            "spec": {"replicatedJobs": out, **spec}}


def py(code: str) -> dict:
    """A container running `code` with this interpreter."""
    return {"command": [sys.executable, "-c", code]}


def sh(script: str, *args) -> dict:
    return {"command": ["/bin/sh", "-c", script, "sh", *args]}


def cli_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for k in list(env):
        if k.startswith("JOBSET_RUNTIME_"):
            del env[k]
    return env


def write_yaml(tmp_path, *docs) -> str:
    path = tmp_path / "jobset.yaml"
    path.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
    return str(path)


def local_argv(tmp_path, *docs, args=()) -> list:
    return [sys.executable, "-m", "jobset_runtime.local.cli", "run", write_yaml(tmp_path, *docs),
            "--run-dir", str(tmp_path / "run"), *args]


def run_local(tmp_path, *docs, args=(), timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(local_argv(tmp_path, *docs, args=args), env=cli_env(), capture_output=True,
                          text=True, timeout=timeout)


def netns_names() -> set:
    try:
        return {n for n in os.listdir("/run/netns") if n.startswith("jsr-")}
    except OSError:
        return set()


def etc_netns() -> set:
    try:
        return {n for n in os.listdir("/etc/netns") if n.startswith("jsr-")}
    except OSError:
        return set()


def mounts_mentioning(word: str) -> list:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if word in line]


def processes_with(token: str) -> list:
    """PIDs whose command line contains `token` (the tests put a unique token in commands)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if token.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            pass
    return found


def bridge_links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


def wait_stubborn_up(p, token: str) -> list:
    """Read the runner's output until both pods of a stubborn JobSet say `up` and their
    daemons (outside the pods' process groups) exist; returns the lines seen."""
    seen = []
    deadline = time.monotonic() + 30
    while sum("] up" in s for s in seen) < 2 and time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        seen.append(line)
    assert sum("] up" in s for s in seen) == 2, "".join(seen)
    for _ in range(100):
        if len(processes_with(token)) >= 4:
            break
        time.sleep(0.02)
    assert len(processes_with(token)) >= 4  # two pods, each with its main process and a daemon
    return seen
