"""The public API, used as a training script would: `import jobset_runtime as jr`."""

import subprocess
import sys
from pathlib import Path

import pytest

import jobset_runtime as jr
from jobset_runtime import contract
from jobset_runtime.local.dns import DnsServer

ROOT = Path(__file__).resolve().parent.parent


def test_the_top_level_is_the_documented_api():
    assert set(jr.__all__) == {
        "FRAMEWORKS", "SCOPES", "ConfigError", "DnsUnavailable", "Identity", "JobSetRuntimeError", "PeersTimeout",
        "Topology", "__version__", "framework_env", "identity", "mpi_hostfile", "wait_for_peers",
    }
    for name in jr.__all__:
        assert getattr(jr, name) is not None
    # Importing it costs the standard library only: nothing heavy on a pod's start-up path.
    code = ("import sys, jobset_runtime; heavy = {'yaml', 'dns', 'jax', 'mpi4py', 'tenacity', 'cryptography'}"
            " & {m.split('.')[0] for m in sys.modules}; print(sorted(heavy))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


def test_identity_and_framework_env_of_a_recorded_pod(podinfo):
    env, _ = podinfo("multislice-1-3", JOBSET_RUNTIME_TOPOLOGY="slice:2x4")
    me = jr.identity(env)
    assert isinstance(me, jr.Identity)
    assert (me.rank, me.world_size, me.slice_id, me.coordinator) == (7, 8, 1, "train-slice-0-0")
    torch = jr.framework_env("torch", identity=me)
    assert torch["RANK"] == "7" and torch["WORLD_SIZE"] == "8"
    assert torch["MASTER_ADDR"] == "train-slice-0-0.train.ml-team.svc.cluster.local"
    assert jr.framework_env("runtime", identity=me)["JOBSET_RUNTIME_RANK"] == "7"
    assert jr.framework_env("tpu", identity=me)["MEGASCALE_SLICE_ID"] == "1"
    assert jr.framework_env("jax", identity=me)["JAX_COORDINATOR_ADDRESS"].startswith("train-slice-0-0.")
    with pytest.raises(jr.ConfigError, match="framework 'tensorflow': use one of runtime, torch, tpu, jax"):
        jr.framework_env("tensorflow", identity=me)


def test_identity_outside_a_pod_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(contract, "PODINFO_DIR", str(tmp_path / "none"))  # whatever this machine has
    with pytest.raises(jr.ConfigError, match="no pod metadata"):
        jr.identity({})


def test_wait_for_peers_by_scope_and_by_name(podinfo, monkeypatch):
    env, _ = podinfo("multislice-1-3", JOBSET_RUNTIME_TOPOLOGY="slice:2x4")
    me = jr.identity(env)
    with DnsServer(zones=["svc.cluster.local"]) as dns:
        for p in range(4):
            dns.set(me.fqdn(f"train-slice-1-{p}"), f"10.0.1.{p}")
        dns.set(me.fqdn("train-slice-0-0"), "10.0.0.0")
        monkeypatch.setenv("JOBSET_RUNTIME_NAMESERVERS", dns.nameserver)
        assert jr.wait_for_peers("slice", identity=me, timeout=10) == {
            "train-slice-0-0": "10.0.0.0", **{f"train-slice-1-{p}": f"10.0.1.{p}" for p in range(4)}}
        assert jr.wait_for_peers(["train-slice-1-2", me.fqdn("train-slice-0-0")], identity=me, timeout=10) == {
            "train-slice-1-2": "10.0.1.2", me.fqdn("train-slice-0-0"): "10.0.0.0"}
        with pytest.raises(jr.PeersTimeout, match="train-slice-0-1"):
            jr.wait_for_peers("all", identity=me, timeout=1.5)
    with pytest.raises(jr.ConfigError, match="peers='everyone'"):
        jr.wait_for_peers("everyone", identity=me)


def test_mpi_hostfile_text_and_file(tmp_path):
    assert jr.mpi_hostfile(["w-0", "w-1"], slots=2) == "w-0 slots=2\nw-1 slots=2\n"
    path = tmp_path / "hostfile"
    assert jr.mpi_hostfile(["w-0"], slots=4, mpi="mpich", path=str(path)) == "w-0:4\n"
    assert path.read_text() == "w-0:4\n"
    with pytest.raises(jr.ConfigError, match="unknown MPI 'lam'"):
        jr.mpi_hostfile(["w-0"], mpi="lam")


def _python_blocks(markdown: str) -> list[str]:
    blocks, inside = [], None
    for line in markdown.splitlines():
        if inside is None and line.strip() == "```python":
            inside = []
        elif inside is not None and line.strip() == "```":
            blocks.append("\n".join(inside))
            inside = None
        elif inside is not None:
            inside.append(line)
    return blocks


def test_the_examples_in_docs_api_run_in_a_pod(podinfo, cli_env):
    blocks = _python_blocks((ROOT / "docs" / "api.md").read_text())
    expected = ["rank 7 of 8, slice 1, coordinator train-slice-0-0",
                "5 peers resolved; MASTER_ADDR=train-slice-0-0.train.ml-team.svc.cluster.local",
                "train-slice-1-2 slots=2", "exit 69: timed out"]
    assert len(blocks) == 1 + len(expected)
    env, _ = podinfo("multislice-1-3", JOBSET_RUNTIME_TOPOLOGY="slice:2x4")
    me = jr.identity(env)
    with DnsServer(zones=["svc.cluster.local"]) as dns:
        for i, host in enumerate(me.all_hosts()):
            dns.set(me.fqdn(host), f"10.0.0.{i + 1}")
        for block, says in zip(blocks[1:], expected):  # the first is the import line alone
            r = subprocess.run([sys.executable, "-c", block], env={**cli_env, **env,
                               "JOBSET_RUNTIME_NAMESERVERS": dns.nameserver}, capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, f"{block}\n{r.stderr}"
            assert "Traceback" not in r.stderr
            assert says in r.stdout + r.stderr
