"""PyTorch for real: generated `torch` manifests on the local runner (pods in network
namespaces, real DNS), torch.distributed over gloo on CPU.

(a) torchrun from the exported PET_* env, 2 pods x 2 processes; (b) a plain
init_process_group("gloo") from MASTER_ADDR/RANK/WORLD_SIZE, 1 process per pod; each
all_reduce checked; (c) a killed rank ends the job through the fail-fast channel while
torch itself would wait out its 10-minute timeout.

They run where torch imports.  PyPI's torch for Linux x86_64 is a CUDA build (its wheel
needs the multi-GB nvidia-* / cuda-toolkit wheels to import even on CPU); on a machine
with a CPU build installed (`pip install torch` from local wheels, or the CPU index)
these run; elsewhere they are skipped with that reason.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jobset_runtime import contract, manifests
from jobset_runtime.manifests.cli import dump_yaml


def _torch_problem():
    try:
        import torch
        import torch.distributed as dist
    except Exception as e:  # a CUDA build without its libraries raises ValueError/OSError, not ImportError
        return f"torch does not import here ({type(e).__name__}: {str(e)[:120]})"
    if not dist.is_available() or not dist.is_gloo_available():
        return f"torch {torch.__version__} was built without torch.distributed / gloo"
    return None


TORCH = _torch_problem()
pytestmark = [
    pytest.mark.skipif(TORCH is not None, reason=f"{TORCH}: PyPI's Linux torch is a CUDA build that needs "
                       "multi-GB nvidia-* wheels; install a CPU build of torch to run these"),
    pytest.mark.skipif(os.geteuid() != 0, reason="pods in network namespaces need root"),
]

BIN = Path(sys.executable).parent
PROG = str(Path(__file__).with_name("torch_prog.py"))
TOKEN = "a-test-token-of-at-least-16-bytes"
MASTER = "tr-node-0-0.tr.default.svc.cluster.local"


def run_torch(tmp_path, command, *, nproc_per_node=1, **options):
    assert (BIN / "jobset-run").exists(), "install the project into this environment first (./dev test does)"
    docs = manifests.torch(name="tr", image="ignored", nodes=2, nproc_per_node=nproc_per_node, max_restarts=0,
                           command=command, group_token=TOKEN, **options)
    path = tmp_path / "tr.yaml"
    path.write_text(dump_yaml(docs))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    r = subprocess.run([str(BIN / "jobset-runtime"), "local", "run", str(path), "--timeout", "150",
                        "--run-dir", str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=200)
    return r, r.stdout + r.stderr


def results(out: str) -> list:
    return [json.loads(m) for m in re.findall(r"^\[tr-node-0-\d-\w{5}\] RESULT (.*)$", out, flags=re.M)]


def test_torchrun_from_the_exported_pet_env_2_pods_x_2_processes(tmp_path):
    r, out = run_torch(tmp_path, [str(BIN / "torchrun"), PROG], nproc_per_node=2)
    assert r.returncode == 0, out[-4000:]
    res = results(out)
    assert sorted(x["rank"] for x in res) == [0, 1, 2, 3], out[-4000:]
    assert all(x["world"] == 4 and x["sum"] == 10.0 for x in res), res
    by_host = {}
    for x in res:
        by_host.setdefault(x["host"], []).append(x["rank"])
        # torchrun's arguments came from jobset-run's PET_* exports alone
        assert x["env"]["PET_NNODES"] == "2" and x["env"]["PET_NPROC_PER_NODE"] == "2"
        assert x["env"]["PET_MASTER_ADDR"] == MASTER
    # node rank 0 (the coordinator pod) holds ranks 0 and 1, as torchrun numbers them
    assert {h: sorted(v) for h, v in by_host.items()} == {"tr-node-0-0": [0, 1], "tr-node-0-1": [2, 3]}
    assert "tr     Completed" in out


def test_plain_init_process_group_from_master_addr_rank_world_size(tmp_path):
    r, out = run_torch(tmp_path, [sys.executable, PROG])
    assert r.returncode == 0, out[-4000:]
    res = sorted(results(out), key=lambda x: x["rank"])
    assert [(x["rank"], x["world"], x["sum"]) for x in res] == [(0, 2, 3.0), (1, 2, 3.0)], out[-4000:]
    for x in res:
        assert x["env"]["MASTER_ADDR"] == MASTER and x["env"]["MASTER_PORT"] == str(contract.TORCH_PORT)
        assert x["env"]["RANK"] == str(x["rank"]) and x["env"]["WORLD_SIZE"] == "2"
        assert x["host"] == f"tr-node-0-{x['rank']}"


def test_a_killed_rank_fails_the_group_fast_not_at_torchs_timeout(tmp_path):
    """Rank 1 SIGKILLs itself outside any collective; rank 0 sleeps with a 10-minute
    process-group timeout. The group channel stops rank 0's pod (exit 75) and names the
    pod that failed, well inside the runner's 150 s limit (exit 1 Failed, not 124)."""
    r, out = run_torch(tmp_path, [sys.executable, PROG, "--kill-rank", "1", "--after", "1"])
    assert r.returncode == 1, out[-4000:]
    assert "tr     Failed" in out
    assert len(results(out)) == 2  # both ranks got through the all_reduce first
    codes = dict(re.findall(r"^\[(tr-node-0-\d)-\w{5}\] jobset-run\[.*; exit code (\d+)$", out, flags=re.M))
    assert codes.get("tr-node-0-0") == str(contract.EXIT_PEER_FAILED), out[-4000:]
    messages = dict(re.findall(r"pod (tr-node-0-\d)-\w{5}: termination message: (.*)", out))
    assert "rank 1 (pod tr-node-0-1) failed first with exit code 137" in messages["tr-node-0-0"], messages
    assert "still running after 600 s" not in out


def test_torchrun_worker_killed_fails_the_group_fast(tmp_path):
    """One of torchrun's worker processes on the second pod is killed: that torchrun ends
    (max_restarts 0), and with it its pod; nothing in torch tells the first pod's torchrun,
    whose workers sleep with a 10-minute timeout. The group channel stops it."""
    r, out = run_torch(tmp_path, [str(BIN / "torchrun"), PROG, "--kill-rank", "3", "--after", "1"],
                       nproc_per_node=2)
    assert r.returncode == 1, out[-4000:]
    assert "tr     Failed" in out
    codes = dict(re.findall(r"^\[(tr-node-0-\d)-\w{5}\] jobset-run\[.*; exit code (\d+)$", out, flags=re.M))
    assert codes.get("tr-node-0-0") == str(contract.EXIT_PEER_FAILED), out[-4000:]
    messages = dict(re.findall(r"pod (tr-node-0-\d)-\w{5}: termination message: (.*)", out))
    assert "rank 1 (pod tr-node-0-1) failed first" in messages["tr-node-0-0"], messages
