"""The `mpi` manifest's ssh Secret is readable by Dockerfile.mpi's non-root user.

A one-pod JobSet on the local runner mounts the generated Secret as the manifest does
and reads it with the real token reader, running as the image's user; the runner lays
the files out and sets the groups as the kubelet does:
- files root-owned with the volume's defaultMode (kubernetes pkg/volume/secret/secret.go);
- with the pod's securityContext.fsGroup, every file group-owned by it and, the volume
  being read-only, the group read bits added (pkg/volume/volume_linux.go, SetVolumeOwnership);
- the container's processes get fsGroup as a supplemental group
  (pkg/kubelet/kuberuntime/security_context.go, determineEffectiveSecurityContext).
"""

import os
import re
import subprocess
import sys

import pytest
import yaml

import mpifixtures as c
from jobset_runtime import contract, manifests

READER = ("import sys\nfrom jobset_runtime.errors import ConfigError\nfrom jobset_runtime.mpi import tokens\n"
          "try:\n    tokens.load_key()\nexcept ConfigError as e:\n    print(e)\n    sys.exit(2)\n"
          "print('read', len(open(sys.argv[1]).read()) > 0)\n")


def _image_user() -> tuple[int, int]:
    text = (c.ROOT / "Dockerfile.mpi").read_text()
    user = re.search(r"^USER (\d+):(\d+)$", text, re.M)
    assert user, "Dockerfile.mpi must name its user as numeric UID:GID"
    return int(user[1]), int(user[2])


def _python_for(uid: int, gid: int) -> str:
    """A Python the image's user may run (the venv's may sit under root's private home)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the Secret's files are made root-owned and read as another user")
    for exe in (sys.executable, os.path.realpath(sys.executable), "/usr/bin/python3"):
        try:
            if subprocess.run([exe, "-c", "import hmac"], user=uid, group=gid, capture_output=True, cwd="/",
                              timeout=30).returncode == 0:
                return exe
        except OSError:
            continue
    pytest.skip(f"no Python interpreter that uid {uid} can run")


def _generated():
    secret, js = manifests.mpi(name="pi", image="i", command=["python", "pi.py"], workers=2)
    pod = js["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == contract.SSH_VOLUME]
    return secret, volume["secret"], (pod.get("securityContext") or {}).get("fsGroup")


def _read_as_image_user(tmp_path, secret, source, fs_group) -> subprocess.CompletedProcess:
    """A one-pod JobSet on the local runner: the generated Secret mounted as the manifest
    mounts it, read by the real token reader running as the image's user."""
    from jobset_runtime.local.pods import netns_available

    ok, why = netns_available()
    if not ok:
        pytest.skip(f"the local runner's namespaces are unavailable: {why}")
    uid, gid = _image_user()
    exe = _python_for(uid, gid)
    key = f"{contract.SSH_DIR}/{contract.SSH_PRIVATE_KEY}"
    container = {
        "name": "main", "image": "unused", "workingDir": "/",
        "command": [exe, "-c", READER, f"{contract.SSH_DIR}/{contract.SSH_AUTHORIZED_KEYS}"],
        "env": [{"name": "PYTHONPATH", "value": str(c.ROOT)}, {"name": contract.SSH_DIR_ENV, "value": contract.SSH_DIR},
                {"name": contract.MPI_TOKEN_FILE_ENV, "value": key}],
        # The image's USER, which the local runner (no images) is told here.
        "securityContext": {"runAsUser": uid, "runAsGroup": gid},
        "volumeMounts": [{"name": contract.SSH_VOLUME, "mountPath": contract.SSH_DIR, "readOnly": True}],
    }
    pod = {"restartPolicy": "Never", "containers": [container],
           "volumes": [{"name": contract.SSH_VOLUME, "secret": source}]}
    if fs_group is not None:
        pod["securityContext"] = {"fsGroup": fs_group}
    js = {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": {"name": "sp"},
          "spec": {"replicatedJobs": [{"name": "w", "replicas": 1, "template": {"spec": {
              "backoffLimit": 0, "template": {"spec": pod}}}}]}}
    path = tmp_path / "jobset.yaml"
    path.write_text(yaml.safe_dump_all([secret, js], sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSET_RUNTIME_")}
    env["PYTHONPATH"] = str(c.ROOT)
    return subprocess.run([sys.executable, "-m", "jobset_runtime.local.cli", "run", str(path), "--run-dir",
                           str(tmp_path / "run"), "--timeout", "60"], env=env, capture_output=True, text=True,
                          timeout=90, check=False)


def test_image_user_matches_the_manifests_fs_group():
    uid, gid = _image_user()
    assert (uid, gid) == (contract.MPI_IMAGE_UID, contract.MPI_FS_GROUP)
    _, source, fs_group = _generated()
    assert fs_group == gid and source["defaultMode"] == 0o440


def test_non_root_image_user_reads_the_generated_secret(tmp_path):
    secret, source, fs_group = _generated()
    r = _read_as_image_user(tmp_path, secret, source, fs_group)
    assert r.returncode == 0 and re.search(r"^\[sp-w-0-0-\w+\] read True$", r.stdout, re.MULTILINE), r.stdout + r.stderr


def test_without_fs_group_the_key_is_unreadable_and_the_error_says_how_to_fix_it(tmp_path):
    """What the manifest used to say (0400, no fsGroup): the image's user cannot read the key."""
    secret, _, _ = _generated()
    r = _read_as_image_user(tmp_path, secret, {"secretName": secret["metadata"]["name"], "defaultMode": 0o400}, None)
    assert r.returncode == 1, r.stdout + r.stderr  # the JobSet failed
    assert "permission denied" in r.stdout and "securityContext.fsGroup" in r.stdout, r.stdout
    assert "exit codes main=2" in r.stdout and "Traceback" not in r.stdout, r.stdout
