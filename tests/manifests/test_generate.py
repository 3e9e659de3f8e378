"""Generated manifests: golden files, examples, CRD validity, the CLI's edges."""

import base64

import pytest
import yaml

import manifest_cases as mc
from jobset_runtime import contract
from jobset_runtime import manifests
from jobset_runtime.errors import ConfigError
from jobset_runtime.manifests import validate

KINDS = sorted(mc.GOLDEN_ARGV)
# Not a bare "mpi": pytest-mpi treats that keyword as its marker and skips the test.
IDS = [f"kind={k}" for k in KINDS]


def golden_output(kind, tmp_path):
    argv = list(mc.GOLDEN_ARGV[kind])
    if kind == "mpi":
        key = tmp_path / "id_ed25519"
        key.write_bytes(mc.fixed_ssh_key())
        cut = argv.index("--")
        argv[cut:cut] = ["--ssh-key", str(key)]
    code, out, err = mc.run_cli(argv, env={contract.JOBSET_CRD_ENV: ""})
    assert code == 0, err
    return out


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_golden(kind, tmp_path, update_golden):
    text = mc.mask_secrets(golden_output(kind, tmp_path), keep_public=True)
    path = mc.GOLDEN / f"{kind}.yaml"
    if update_golden:
        path.write_text(text)
    assert path.read_text() == text, f"{path} is stale; rerun with UPDATE_GOLDEN=1 and review the diff"


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_example_is_current(kind, update_golden):
    path = mc.EXAMPLES / f"{kind}.yaml"
    text = mc.example_text(kind)
    if update_golden:
        path.write_text(text)
    assert path.read_text() == text, f"{path} is stale; rerun with UPDATE_GOLDEN=1"


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_generated_and_examples_validate_against_crd(kind, crd, tmp_path):
    docs = list(yaml.safe_load_all(golden_output(kind, tmp_path)))
    assert validate.document_issues(docs, crd) == ([], 1)
    example = validate.load_documents(str(mc.EXAMPLES / f"{kind}.yaml"))
    assert validate.document_issues(example, crd) == ([], 1)


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_jsonschema_agrees(kind, crd, tmp_path):
    """Cross-check with jsonschema on the same openAPIV3Schema (it ignores the x- keys
    and allows unknown fields, so it can only confirm types, enums and required)."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = crd.schemas["v1alpha2"]
    for doc in yaml.safe_load_all(golden_output(kind, tmp_path)):
        if doc["kind"] == contract.JOBSET_KIND:
            jsonschema.Draft4Validator(schema).validate(doc)


def test_cli_validates_with_crd_from_env(crd_file, tmp_path):
    code, out, err = mc.run_cli(mc.EXAMPLES_ARGV["jax"], env={contract.JOBSET_CRD_ENV: str(crd_file)})
    assert code == 0, err
    path = tmp_path / "jax.yaml"
    path.write_text(out)
    code, out, err = mc.run_cli(["validate", str(path), "--crd", str(crd_file)])
    assert (code, err) == (0, "")
    assert "1 JobSet accepted: defaulted, then checked against the CRD schema and its CEL rules, and the webhook rules" in out


def test_every_pod_gets_what_the_runtime_reads(tmp_path):
    for kind in KINDS:
        for doc in yaml.safe_load_all(golden_output(kind, tmp_path)):
            if doc["kind"] != contract.JOBSET_KIND:
                continue
            topology = ",".join(f"{r['name']}:{r['replicas']}x{r['template']['spec']['parallelism']}"
                                for r in doc["spec"]["replicatedJobs"])
            for rjob in doc["spec"]["replicatedJobs"]:
                job = rjob["template"]["spec"]
                pod = job["template"]["spec"]
                assert pod["restartPolicy"] == "Never"
                assert job["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [contract.EXIT_CONFIG]
                volume = next(v for v in pod["volumes"] if v["name"] == contract.PODINFO_VOLUME)
                paths = {i["path"]: i["fieldRef"]["fieldPath"] for i in volume["downwardAPI"]["items"]}
                assert paths == {contract.PODINFO_LABELS: "metadata.labels",
                                 contract.PODINFO_ANNOTATIONS: "metadata.annotations",
                                 contract.PODINFO_NAME: "metadata.name",
                                 contract.PODINFO_NAMESPACE: "metadata.namespace"}
                for c in pod["containers"]:
                    assert c["command"][0] == "jobset-run" and "--" in c["command"]
                    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
                    assert {"name": contract.PODINFO_VOLUME, "mountPath": contract.PODINFO_DIR,
                            "readOnly": True} in c["volumeMounts"]
                    env = {e["name"]: e.get("value") for e in c["env"]}
                    assert env[contract.TOPOLOGY_ENV] == topology
            rules = doc["spec"]["failurePolicy"]["rules"]
            assert rules == [{"name": "ConfigurationError", "action": "FailJobSet",
                              "onJobFailureReasons": ["PodFailurePolicy"]}]


def test_tpu_multislice_shape():
    *_, doc = manifests.tpu_multislice(name="ms", image="i", command=["python", "t.py"], slices=199,
                                      hosts_per_slice=64, accelerator="tpu-v5p-slice", topology="4x8x8",
                                      host_network=True)
    (rjob,) = doc["spec"]["replicatedJobs"]
    job = rjob["template"]["spec"]
    pod = job["template"]["spec"]
    assert (rjob["name"], rjob["replicas"], job["parallelism"], job["completions"], job["backoffLimit"]) == \
        ("slice", 199, 64, 64, 0)
    assert doc["metadata"]["annotations"][contract.EXCLUSIVE_TOPOLOGY_KEY] == "cloud.google.com/gke-nodepool"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
                                   "cloud.google.com/gke-tpu-topology": "4x8x8"}
    assert pod["containers"][0]["resources"]["limits"] == {"google.com/tpu": 4}
    assert pod["tolerations"] == [{"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert (pod["hostNetwork"], pod["dnsPolicy"]) == (True, "ClusterFirstWithHostNet")
    assert "--tpu" in pod["containers"][0]["command"]
    assert doc["spec"]["coordinator"] == {"replicatedJob": "slice", "jobIndex": 0, "podIndex": 0}


def test_mpi_shape_and_key_pair():
    from cryptography.hazmat.primitives import serialization

    secret, doc = manifests.mpi(name="pi", image="i", command=["python", "pi.py"], workers=3,
                                slots_per_worker=2, mpi="intel")
    assert secret["kind"] == "Secret" and secret["type"] == "kubernetes.io/ssh-auth"
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    private = serialization.load_ssh_private_key(data[contract.SSH_PRIVATE_KEY], password=None)
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    assert data[contract.SSH_PUBLIC_KEY].startswith(public + b" ")
    assert data[contract.SSH_AUTHORIZED_KEYS] == data[contract.SSH_PUBLIC_KEY]
    # A second call makes a different key.
    other = manifests.mpi(name="pi", image="i", command=["x"], workers=1)[0]
    assert other["data"][contract.SSH_PRIVATE_KEY] != secret["data"][contract.SSH_PRIVATE_KEY]

    spec = doc["spec"]
    worker, launcher = spec["replicatedJobs"]
    assert (worker["name"], worker["template"]["spec"]["parallelism"]) == ("worker", 3)
    assert launcher["dependsOn"] == [{"name": "worker", "status": "Ready"}]
    assert spec["successPolicy"] == {"operator": "All", "targetReplicatedJobs": ["launcher"]}
    assert spec["network"]["publishNotReadyAddresses"] is True
    wpod = worker["template"]["spec"]["template"]["spec"]
    assert wpod["containers"][0]["readinessProbe"]["tcpSocket"]["port"] == contract.MPI_PORT
    lcmd = launcher["template"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert lcmd[lcmd.index("--") + 1:] == ["python", "-m", "jobset_runtime.mpi", "launcher", "--mpi", "intel",
                                            "--slots-per-worker", "2", "--", "python", "pi.py"]
    for rj in (worker, launcher):
        pod = rj["template"]["spec"]["template"]["spec"]
        # Readable by the image's non-root user through the fsGroup, by nobody else.
        assert {"name": contract.SSH_VOLUME, "secret": {"secretName": "pi-ssh", "defaultMode": 0o440}} \
            in pod["volumes"]
        assert pod["securityContext"] == {"fsGroup": contract.MPI_FS_GROUP}


def _launcher_and_env(docs):
    _, doc = docs
    worker, launcher = doc["spec"]["replicatedJobs"]
    lcmd = launcher["template"]["spec"]["template"]["spec"]["containers"][0]["command"]
    envs = [{e["name"]: e.get("value") for e in rj["template"]["spec"]["template"]["spec"]["containers"][0]["env"]}
            for rj in (worker, launcher)]
    return lcmd[lcmd.index("launcher"):], envs


def test_mpi_np_leaves_spare_slots_among_mpiruns_options():
    cmd, _ = _launcher_and_env(manifests.mpi(name="pi", image="i", command=["python", "s.py"], workers=3,
                                             slots_per_worker=2, np=4))
    assert cmd[cmd.index("--"):] == ["--", "-n", "4", "--", "python", "s.py"]
    cmd, _ = _launcher_and_env(manifests.mpi(name="pi", image="i", command=["-x", "A", "--", "python", "s.py"],
                                             workers=3, slots_per_worker=2, np=6))
    assert cmd[cmd.index("--"):] == ["--", "-n", "6", "-x", "A", "--", "python", "s.py"]


@pytest.mark.parametrize("options, message", [
    ({"np": 7}, "--np 7: more ranks than the 6 slots"),
    ({"np": 0}, "--np 0"),
    ({"np": 4, "command": ["-np", "2", "--", "x"]}, "give the number of ranks once"),
    ({"command": ["--", "-x", "A", "--", "x"]}, "doubled separator"),  # `manifest mpi ... -- -- OPTS -- PROG`
    ({"command": ["-x", "A", "x"]}, "'-x' where the program should be"),
    ({"mpi": "mpich", "yield_when_idle": True}, "--mpi mpich has no such setting"),
])
def test_mpi_refuses_what_the_launcher_would_refuse(options, message):
    args = {"name": "pi", "image": "i", "command": ["x"], "workers": 3, "slots_per_worker": 2, **options}
    with pytest.raises(ConfigError) as e:
        manifests.mpi(**args)
    assert message in str(e.value)


def test_mpi_yield_when_idle_when_pods_have_fewer_cpus_than_slots():
    def yields(**options):
        _, envs = _launcher_and_env(manifests.mpi(name="pi", image="i", command=["x"], workers=2,
                                                  slots_per_worker=4, **options))
        return [env.get("OMPI_MCA_mpi_yield_when_idle") for env in envs]

    assert yields(cpu="2") == ["1", "1"]          # 2 CPUs for 4 ranks: they must share
    assert yields(cpu="3500m") == ["1", "1"]
    assert yields(cpu="4") == [None, None]        # a CPU per rank: busy-polling is fastest
    assert yields() == [None, None]               # unknown
    assert yields(yield_when_idle=True) == ["1", "1"]
    assert yields(cpu="1", yield_when_idle=False) == [None, None]
    assert yields(cpu="1", mpi="mpich") == [None, None]  # an Open MPI setting
    assert yields(cpu="1", env={"OMPI_MCA_mpi_yield_when_idle": "0"}) == ["0", "0"]  # the user's own wins


def test_mpi_rejects_a_non_ed25519_or_garbage_key():
    with pytest.raises(ConfigError, match="OpenSSH"):
        manifests.mpi(name="pi", image="i", command=["x"], workers=1, ssh_private_key=b"not a key")


@pytest.mark.parametrize("argv, message", [
    (["jax", "--name", "j", "--image", "i", "--hosts", "0", "--", "x"], "--hosts 0"),
    (["jax", "--name", "j", "--image", "i", "--hosts", "2"], "no container command"),
    (["jax", "--name", "Bad_Name", "--image", "i", "--hosts", "2", "--", "x"], "metadata.name"),
    (["torch", "--name", "t", "--image", "i", "--nodes", "2", "--env", "JOBSET_RUNTIME_RANK=3", "--", "x"],
     "set by jobset-runtime"),
    (["tpu-multislice", "--name", "t", "--image", "i", "--slices", "2", "--hosts-per-slice", "2",
      "--accelerator", "a", "--topology", "2x2", "--toleration", "k:Sometimes", "--", "x"], "effect"),
    (["jax", "--name", "x" * 50, "--image", "i", "--hosts", "100", "--", "x"], "stays within 57 characters"),
    (["nope", "--", "x"], "invalid choice"),
    (["mpi", "--name", "m", "--image", "i", "--workers", "2", "--", "--", "-x", "A", "--", "python", "t.py"],
     "manifest mpi [options] -- MPIRUN-OPTIONS -- PROGRAM ARGS"),
])
def test_cli_bad_input_exits_2_without_traceback(argv, message):
    code, out, err = mc.run_cli(argv, env={contract.JOBSET_CRD_ENV: ""})
    assert code == contract.EXIT_CONFIG
    assert out == "" and "Traceback" not in err
    assert message in err


def test_cli_validate_reports_yaml_errors_cleanly(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: [unclosed\n")
    code, out, err = mc.run_cli(["validate", str(bad)], env={contract.JOBSET_CRD_ENV: ""})
    assert code == contract.EXIT_CONFIG and "not valid YAML at line" in err and "Traceback" not in err
    code, out, err = mc.run_cli(["validate", str(tmp_path / "missing.yaml")], env={contract.JOBSET_CRD_ENV: ""})
    assert code == contract.EXIT_CONFIG and "cannot read" in err
    empty = tmp_path / "cm.yaml"
    empty.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    code, out, err = mc.run_cli(["validate", str(empty)], env={contract.JOBSET_CRD_ENV: ""})
    assert code == contract.EXIT_CONFIG and "no JobSet" in err


def test_cli_rejects_a_file_that_is_not_a_crd(tmp_path):
    not_crd = tmp_path / "crd.yaml"
    not_crd.write_text("kind: Secret\n")
    code, out, err = mc.run_cli(mc.EXAMPLES_ARGV["jax"][:-3] + ["--crd", str(not_crd), "--", "x"])
    assert code == contract.EXIT_CONFIG and "CustomResourceDefinition" in err


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_container_commands_parse_with_jobset_run(kind, tmp_path):
    """The wrapped command is one `jobset-run` accepts, with the user's command intact after `--`."""
    from jobset_runtime.cli import _run_parser

    for doc in yaml.safe_load_all(golden_output(kind, tmp_path)):
        if doc["kind"] != contract.JOBSET_KIND:
            continue
        for rjob in doc["spec"]["replicatedJobs"]:
            for c in rjob["template"]["spec"]["template"]["spec"]["containers"]:
                args = _run_parser("jobset-run").parse_args(c["command"][1:])
                assert args.command[1:] == c["command"][c["command"].index("--") + 1:]
                assert args.timeout == 300.0  # --peer-timeout in the golden options
                assert args.tpu is (True if kind == "tpu-multislice" else None)


def test_through_the_project_cli_as_a_process(cli_env, tmp_path):
    """`jobset-runtime manifest ...` end to end: the YAML goes out on stdout, exit codes come back."""
    import subprocess
    import sys

    cli_env[contract.JOBSET_CRD_ENV] = ""
    run = [sys.executable, "-m", "jobset_runtime", "manifest"]
    done = subprocess.run(run + mc.EXAMPLES_ARGV["torch"], env=cli_env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    path = tmp_path / "torch.yaml"
    path.write_text(done.stdout)
    done = subprocess.run(run + ["validate", "-"], input=done.stdout, env=cli_env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "1 JobSet accepted" in done.stdout, done.stderr
    broken = path.read_text().replace("parallelism:", "paralelism:", 1)
    # Without the CRD the typo is not an API-server error; the runtime's verdict sees
    # completions (2) != parallelism (1, the default): a warning, an error with --for-runtime.
    done = subprocess.run(run + ["validate", "-"], input=broken, env=cli_env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "warning (runtime)" in done.stderr, done.stderr
    done = subprocess.run(run + ["validate", "-", "--for-runtime"], input=broken, env=cli_env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == contract.EXIT_CONFIG and "Traceback" not in done.stderr
    assert "error (runtime)" in done.stderr and "completions (2) != parallelism (1)" in done.stderr


def test_group_channel_secret_and_wiring():
    first = manifests.jax(name="jx", image="i", command=["x"], hosts=2, in_place_restarts=2)
    second = manifests.jax(name="jx", image="i", command=["x"], hosts=2)
    secret, doc = first
    token = base64.b64decode(secret["data"][contract.GROUP_TOKEN_KEY])
    assert len(token) >= 32 and token != base64.b64decode(second[0]["data"][contract.GROUP_TOKEN_KEY])
    job = doc["spec"]["replicatedJobs"][0]["template"]["spec"]
    pod = job["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"][:c["command"].index("--")] == ["jobset-run", "--wait", "coordinator", "--group", "on",
                                                       "--restarts", "2"]
    assert {"name": contract.GROUP_VOLUME, "mountPath": contract.GROUP_TOKEN_DIR, "readOnly": True} in c["volumeMounts"]
    assert {"name": contract.GROUP_VOLUME, "secret": {"secretName": secret["metadata"]["name"], "defaultMode": 0o444}} \
        in pod["volumes"]
    assert {"name": contract.POD_IP_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in c["env"]
    # A pod that only followed a peer's failure does not fail its Job; a configuration error fails it at once.
    actions = {r["action"]: r["onExitCodes"]["values"] for r in job["podFailurePolicy"]["rules"]}
    assert actions == {"FailJob": [contract.EXIT_CONFIG], "Ignore": [contract.EXIT_PEER_FAILED]}


def test_without_fail_fast_there_is_no_group_secret():
    (doc,) = manifests.torch(name="tr", image="i", command=["x"], nodes=2, fail_fast=False)
    assert doc["kind"] == "JobSet"
    assert "--group" not in doc["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]["command"]
    with pytest.raises(ConfigError, match="in-place-restarts"):
        manifests.torch(name="tr", image="i", command=["x"], nodes=2, fail_fast=False, in_place_restarts=1)


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_network_policy_admits_only_the_jobsets_own_pods(kind):
    argv = list(mc.GOLDEN_ARGV[kind])
    code, out, err = mc.run_cli(argv, env={contract.JOBSET_CRD_ENV: ""})
    assert code == 0, err
    assert not [d for d in yaml.safe_load_all(out) if d and d["kind"] == "NetworkPolicy"]  # only on request
    cut = argv.index("--")
    code, out, err = mc.run_cli(argv[:cut] + ["--network-policy"] + argv[cut:], env={contract.JOBSET_CRD_ENV: ""})
    assert code == 0, err
    docs = [d for d in yaml.safe_load_all(out) if d]
    jobset = next(d for d in docs if d["kind"] == contract.JOBSET_KIND)
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["metadata"]["namespace"] == jobset["metadata"]["namespace"]
    own = {"matchLabels": {contract.JOBSET_NAME_KEY: jobset["metadata"]["name"]}}
    # The pods it selects and the only pods it admits: this JobSet's (JobSet labels every pod with
    # its name, REFERENCE.md); the policy restricts ingress only.
    assert policy["spec"] == {"podSelector": own, "policyTypes": ["Ingress"], "ingress": [{"from": [{"podSelector": own}]}]}
