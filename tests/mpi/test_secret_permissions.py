"""The `mpi` manifest's ssh Secret is readable by Dockerfile.mpi's non-root user.

The local runner writes volumes as plain root files and ignores defaultMode and
fsGroup, so this lays the Secret's files out as the kubelet does and reads them with
the real token reader, in a process running as the image's user with the groups the
kubelet gives the container:
- files root-owned with the volume's defaultMode (kubernetes pkg/volume/secret/secret.go);
- with the pod's securityContext.fsGroup, every file group-owned by it and, the volume
  being read-only, the group read bits added (pkg/volume/volume_linux.go, SetVolumeOwnership);
- the container's processes get fsGroup as a supplemental group
  (pkg/kubelet/kuberuntime/security_context.go, determineEffectiveSecurityContext).
"""

import base64
import os
import re
import subprocess
import sys
import tempfile

import pytest

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


def _kubelet_secret_volume(root: str, secret: dict, source: dict, fs_group) -> str:
    d = os.path.join(root, "ssh")
    os.mkdir(d)
    os.chmod(root, 0o755)
    for key, value in secret["data"].items():
        path = os.path.join(d, key)
        with open(path, "wb") as f:
            f.write(base64.b64decode(value))
        mode = source.get("defaultMode", 0o644)
        os.chown(path, 0, 0)
        if fs_group is not None:
            os.chown(path, 0, fs_group)
            mode |= 0o440
        os.chmod(path, mode)
    if fs_group is not None:
        os.chown(d, 0, fs_group)
        os.chmod(d, 0o755 | 0o2000)
    else:
        os.chmod(d, 0o755)
    return d


def _read_as_image_user(secret, source, fs_group) -> subprocess.CompletedProcess:
    uid, gid = _image_user()
    exe = _python_for(uid, gid)
    with tempfile.TemporaryDirectory() as root:
        d = _kubelet_secret_volume(root, secret, source, fs_group)
        key = os.path.join(d, contract.SSH_PRIVATE_KEY)
        env = {"PYTHONPATH": str(c.ROOT), contract.SSH_DIR_ENV: d, contract.MPI_TOKEN_FILE_ENV: key, "PATH": "/usr/bin:/bin"}
        return subprocess.run([exe, "-c", READER, os.path.join(d, contract.SSH_AUTHORIZED_KEYS)], user=uid, group=gid,
                              extra_groups=[fs_group] if fs_group is not None else [], env=env, cwd="/",
                              capture_output=True, text=True, timeout=60)


def test_image_user_matches_the_manifests_fs_group():
    uid, gid = _image_user()
    assert (uid, gid) == (contract.MPI_IMAGE_UID, contract.MPI_FS_GROUP)
    _, source, fs_group = _generated()
    assert fs_group == gid and source["defaultMode"] == 0o440


def test_non_root_image_user_reads_the_generated_secret():
    secret, source, fs_group = _generated()
    r = _read_as_image_user(secret, source, fs_group)
    assert r.returncode == 0 and r.stdout.strip() == "read True", r.stdout + r.stderr


def test_without_fs_group_the_key_is_unreadable_and_the_error_says_how_to_fix_it():
    """What the manifest used to say (0400, no fsGroup): the image's user cannot read the key."""
    secret, _, _ = _generated()
    r = _read_as_image_user(secret, {"secretName": "pi-ssh", "defaultMode": 0o400}, None)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "permission denied" in r.stdout and "securityContext.fsGroup" in r.stdout, r.stdout
    assert "Traceback" not in r.stderr
