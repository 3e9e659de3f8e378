"""The corpus (tests/manifests/corpus/): one JobSet per upstream rule, each with the
verdict a JobSet v0.12 API server gives it (expected.yaml), replayed against
`manifest validate` and, where one is configured, against a real API server."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import manifest_cases as mc
from jobset_runtime import contract
from jobset_runtime.manifests import validate

CORPUS = Path(__file__).resolve().parent / "corpus"
EXPECTED = yaml.safe_load((CORPUS / "expected.yaml").read_text())
IDS = [e["file"].removesuffix(".yaml") for e in EXPECTED]
# A kubeconfig for a JobSet v0.12 API server (with its webhook) to replay the corpus against.
API_SERVER_KUBECONFIG_ENV = "JOBSET_RUNTIME_TEST_KUBECONFIG"


def _gates(entry):
    overrides = entry.get("feature_gates") or {}
    return validate.FeatureGates.parse(",".join(f"{k}={str(v).lower()}" for k, v in overrides.items()))


def _verdict(entry, crd):
    docs = validate.load_documents(str(CORPUS / entry["file"]))
    return validate.verdict(docs, crd, _gates(entry))


def test_corpus_files_and_expectations_match():
    files = {p.name for p in CORPUS.glob("*.yaml")} - {"expected.yaml"}
    assert files == {e["file"] for e in EXPECTED}
    for entry in EXPECTED:
        assert entry["api"] in ("accepted", "rejected") and entry["source"]
        assert bool(entry.get("paths")) == (entry["api"] == "rejected"), entry["file"]
        assert entry["file"].startswith("reject-" if entry["api"] == "rejected" else "accept-"), entry["file"]


@pytest.mark.parametrize("entry", EXPECTED, ids=IDS)
def test_corpus_with_the_crd(entry, crd):
    v = _verdict(entry, crd)
    assert v.count == 1
    assert sorted({i.path for i in v.api}) == sorted(set(entry.get("paths", []))), [str(i) for i in v.api]
    assert sorted({i.path for i in v.jobs}) == sorted(entry.get("jobs", [])), [str(i) for i in v.jobs]
    assert sorted({i.path for i in v.runtime}) == sorted(entry.get("runtime", [])), [str(i) for i in v.runtime]


@pytest.mark.parametrize("entry", [e for e in EXPECTED if not e.get("needs_crd")],
                         ids=[e["file"].removesuffix(".yaml") for e in EXPECTED if not e.get("needs_crd")])
def test_corpus_without_a_crd(entry):
    """The webhook's rules and the API server's metadata rules need no CRD: same verdict."""
    v = _verdict(entry, None)
    assert sorted({i.path for i in v.api}) == sorted(set(entry.get("paths", []))), [str(i) for i in v.api]
    assert sorted({i.path for i in v.jobs + v.runtime}) == sorted(entry.get("jobs", []) + entry.get("runtime", []))


def test_corpus_without_a_crd_misses_only_what_needs_one():
    missed = [e["file"] for e in EXPECTED if e.get("needs_crd") and not _verdict(e, None).api]
    assert missed == [e["file"] for e in EXPECTED if e.get("needs_crd")]


@pytest.mark.parametrize("name, code, words", [
    ("accept-minimal", 0, "1 JobSet accepted"),
    ("reject-group-name", contract.EXIT_CONFIG, ".spec.replicatedJobs[0].groupName: Invalid value 'Group_A'"),
    ("reject-in-order-and-depends-on", contract.EXIT_CONFIG, "StartupPolicy and DependsOn APIs are mutually exclusive"),
])
def test_cli_exit_codes(name, code, words, crd_file):
    got, out, err = mc.run_cli(["validate", str(CORPUS / f"{name}.yaml"), "--crd", str(crd_file)])
    assert got == code and words in out + err, err
    assert "Traceback" not in err


def test_cli_runtime_verdict_is_a_warning_then_an_error(crd_file):
    path = str(CORPUS / "accept-completions-differ.yaml")
    code, out, err = mc.run_cli(["validate", path, "--crd", str(crd_file)])
    assert code == 0 and "warning (runtime)" in err and "completions (4) != parallelism (2)" in err
    code, out, err = mc.run_cli(["validate", path, "--crd", str(crd_file), "--for-runtime"])
    assert code == contract.EXIT_CONFIG and "error (runtime)" in err and out == ""


def test_cli_jobs_verdict_is_a_warning(crd_file):
    code, out, err = mc.run_cli(["validate", str(CORPUS / "accept-parallelism-only.yaml"), "--crd", str(crd_file)])
    assert code == 0 and "warning (jobs)" in err and "when completion mode is Indexed" in err


def test_cli_feature_gates(crd_file):
    path = str(CORPUS / "accept-restart-job-gate-on.yaml")
    code, _, err = mc.run_cli(["validate", path, "--crd", str(crd_file)])
    assert code == contract.EXIT_CONFIG and "RestartJob feature gate is disabled" in err
    code, _, err = mc.run_cli(["validate", path, "--crd", str(crd_file), "--feature-gates", "RestartJob=true"])
    assert code == 0, err
    code, _, err = mc.run_cli(["validate", path, "--feature-gates", "RestartJobs=true"])
    assert code == contract.EXIT_CONFIG and "unknown gate" in err and "Traceback" not in err


def test_replay_against_a_real_api_server(tmp_path):
    """`kubectl create --dry-run=server` (apply refuses generateName) runs defaulting, the
    schema, CEL and the webhooks: the real API server's verdict, compared with expected.yaml
    (gates at their defaults)."""
    kubeconfig = os.environ.get(API_SERVER_KUBECONFIG_ENV)
    kubectl = shutil.which("kubectl")
    if not kubeconfig or not kubectl:
        pytest.skip(f"no JobSet v0.12 API server configured: set {API_SERVER_KUBECONFIG_ENV} to its "
                    "kubeconfig (with kubectl on PATH) to replay the corpus against it")
    wrong = []
    for entry in EXPECTED:
        if entry.get("feature_gates"):
            continue  # the server's manager runs with its own gates
        done = subprocess.run([kubectl, "--kubeconfig", kubeconfig, "create", "--dry-run=server", "-f",
                               str(CORPUS / entry["file"])], capture_output=True, text=True, timeout=60)
        got = "accepted" if done.returncode == 0 else "rejected"
        if got != entry["api"]:
            wrong.append(f"{entry['file']}: server {got}: {done.stderr.strip()[:300]}")
    assert not wrong, "\n".join(wrong)
