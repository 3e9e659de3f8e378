"""Shared by the manifest tests: the CLI calls behind each golden file and example,
the fixed ssh key, masking, and the CRD lookup."""

from __future__ import annotations

import base64
import contextlib
import io
import os
from pathlib import Path

import yaml

from jobset_runtime import contract
from jobset_runtime.manifests.cli import main as manifest_main

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"
EXAMPLES = ROOT / "examples"

# Examples: the smallest realistic call per kind, printed in each file's header.
EXAMPLES_ARGV = {
    "tpu-multislice": ["tpu-multislice", "--name", "llm", "--image", "us-docker.pkg.dev/my-project/train:latest",
                       "--slices", "2", "--tpu-type", "v5p-64", "--", "python", "train.py"],
    "mpi": ["mpi", "--name", "pi", "--image", "ghcr.io/example/mpi-pi:latest", "--workers", "2",
            "--slots-per-worker", "2", "--", "python", "-m", "mpi4py", "pi.py"],
    "jax": ["jax", "--name", "jax-cpu", "--image", "ghcr.io/example/jax:latest", "--replicas", "2",
            "--hosts", "2", "--cpu", "2", "--memory", "4Gi", "--", "python", "train.py"],
    "torch": ["torch", "--name", "ddp", "--image", "ghcr.io/example/torch:latest", "--nodes", "2",
              "--nproc-per-node", "8", "--gpus-per-node", "8", "--", "torchrun", "train.py"],
}

# Golden files: every common option, so a change to any of them shows up in review.
_COMMON = ["--namespace", "research", "--queue", "team-a", "--max-restarts", "5", "--ttl", "600",
           "--priority-class", "high", "--cpu", "4", "--memory", "16Gi", "--node-selector", "pool=train",
           "--toleration", "dedicated=ml:NoSchedule", "--env", "LOG_LEVEL=debug", "--peer-timeout", "300",
           "--image-pull-policy", "IfNotPresent"]
GOLDEN_ARGV = {
    "tpu-multislice": ["tpu-multislice", "--name", "ms", "--image", "img:1", "--slices", "3",
                       "--hosts-per-slice", "2", "--accelerator", "tpu-v5-lite-podslice", "--topology", "2x4",
                       "--chips-per-host", "4", "--host-network", "--subdomain", "ms-net", *_COMMON,
                       "--", "python", "train.py", "--steps=10"],
    "mpi": ["mpi", "--name", "hpl", "--image", "img:1", "--workers", "3", "--slots-per-worker", "4",
            "--mpi", "mpich", *_COMMON, "--", "./xhpl", "-n", "1000"],
    "jax": ["jax", "--name", "jx", "--image", "img:1", "--replicas", "2", "--hosts", "3",
            "--gpus-per-host", "8", "--wait", "all", *_COMMON, "--", "python", "-c", "print('hi there')"],
    "torch": ["torch", "--name", "tr", "--image", "img:1", "--nodes", "4", "--nproc-per-node", "2",
              *_COMMON, "--", "torchrun", "train.py"],
}

# A fixed ed25519 key (seed 0x01 * 32) for the MPI golden file; test data only.
FIXED_SEED = bytes([1]) * 32
MASK = base64.b64encode(b"placeholder: `jobset-runtime manifest` makes a fresh one per JobSet\n").decode()


def fixed_ssh_key() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.from_private_bytes(FIXED_SEED)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())


def run_cli(argv: list, env: dict | None = None) -> tuple[int, str, str]:
    """Run `jobset-runtime manifest ARGV` in-process; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = manifest_main(list(argv))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return code, out.getvalue(), err.getvalue()


def mask_secrets(text: str, keep_public: bool) -> str:
    """Replace generated key material so the text is stable; the public key of the
    fixed test key is deterministic and kept when asked (OpenSSH private keys carry a
    random check number, so the private key is always masked)."""
    docs = list(yaml.safe_load_all(text))
    for doc in docs:
        if doc and doc.get("kind") == "Secret":
            for key in doc.get("data", {}):
                if key in (contract.SSH_PRIVATE_KEY, contract.GROUP_TOKEN_KEY) or not keep_public:
                    doc["data"][key] = MASK
    return yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True)


def example_text(kind: str) -> str:
    code, out, err = run_cli(EXAMPLES_ARGV[kind], env={contract.JOBSET_CRD_ENV: ""})
    assert code == 0, err
    header = ("# Generated; do not edit. Regenerate with:\n#   jobset-runtime manifest "
              + " ".join(EXAMPLES_ARGV[kind]) + "\n")
    if kind == "mpi":
        header += "# The Secret's data is a placeholder here: the command makes a fresh ssh key pair.\n"
    else:
        header += "# The group token is a placeholder here: the command makes a fresh random one.\n"
    return header + mask_secrets(out, keep_public=False)


def crd_path() -> Path | None:
    """`<root>/../shared/jobset/jobset-crd.yaml`, else $JOBSET_CRD, else the CRD the
    control-plane build took from sigs.k8s.io/jobset (`./dev control-plane`)."""
    from jobset_runtime.local.controlplane import binaries

    candidates = [ROOT.parent / "shared" / "jobset" / "jobset-crd.yaml"]
    if os.environ.get(contract.JOBSET_CRD_ENV):
        candidates.append(Path(os.environ[contract.JOBSET_CRD_ENV]))
    ok, where = binaries.available()
    if ok:
        candidates.append(Path(where) / contract.JOBSET_CRD_FILE)
    return next((p for p in candidates if p.is_file()), None)
