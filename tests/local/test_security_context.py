"""securityContext users and groups, and volume file modes, as the kubelet applies them."""

import base64
import re

import localfixtures as lf
import pytest

from jobset_runtime.errors import ConfigError
from jobset_runtime.local import kubelet

# --- pure ----------------------------------------------------------------------------


def test_container_ids_override_the_pods_and_groups_come_from_the_pod():
    pod = {"securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000,
                               "supplementalGroups": [3000, 2000]}}
    assert kubelet.credentials(pod, {}) == kubelet.Credentials(1000, 1000, (2000, 3000))
    ctr = {"securityContext": {"runAsUser": 1234}}
    assert kubelet.credentials(pod, ctr) == kubelet.Credentials(1234, 1000, (2000, 3000))
    assert not kubelet.credentials({}, {}).set


def test_without_run_as_group_the_users_primary_group_else_0():
    pod = {"securityContext": {"runAsUser": 1234}}
    assert kubelet.credentials(pod, {}, lambda uid: 77) == kubelet.Credentials(1234, 77, ())
    assert kubelet.credentials(pod, {}, lambda uid: None) == kubelet.Credentials(1234, 0, ())


@pytest.mark.parametrize("sc", [{"runAsUser": -1}, {"runAsGroup": "1000"}, {"fsGroup": 2**31}, {"runAsUser": True},
                                {"supplementalGroups": [1, "x"]}])
def test_bad_ids_are_named(sc):
    with pytest.raises(ConfigError, match=r"securityContext\.\w+: .* is not a user or group id"):
        kubelet.credentials({"securityContext": sc}, {})


def test_setpriv_sets_groups_then_ids():
    assert kubelet.setpriv_argv(kubelet.Credentials(1000, 1000, (2000, 3000))) == [
        "setpriv", "--reuid=1000", "--regid=1000", "--groups=2000,3000", "--"]
    assert kubelet.setpriv_argv(kubelet.Credentials(1000, 0, ())) == [
        "setpriv", "--reuid=1000", "--regid=0", "--clear-groups", "--"]
    assert kubelet.setpriv_argv(kubelet.Credentials(None, None, (2000,))) == ["setpriv", "--groups=2000", "--"]


def test_file_modes_and_fs_group_masks():
    vol = {"name": "s", "secret": {"secretName": "x", "defaultMode": 0o440, "items": [
        {"key": "a", "path": "a"}, {"key": "b", "path": "sub/b", "mode": 0o400}]}}
    assert kubelet.volume_file_modes(vol) == (0o440, {"sub/b": 0o400})
    assert kubelet.volume_file_modes({"name": "c", "configMap": {"name": "x"}}) == (0o644, {})
    with pytest.raises(ConfigError, match=r"volume 's': defaultMode: 1000 is not a file mode"):
        kubelet.volume_file_modes({"name": "s", "secret": {"defaultMode": 1000}})
    # pkg/volume/volume_linux.go: read-only volumes get group read, others read-write; dirs setgid + x.
    assert kubelet.fs_group_mode(0o400, read_only=True, is_dir=False) == 0o440
    assert kubelet.fs_group_mode(0o644, read_only=False, is_dir=False) == 0o664
    assert kubelet.fs_group_mode(0o755, read_only=True, is_dir=True) == 0o2755


# --- on the local runner ---------------------------------------------------------------

SECRET = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
          "data": {"token": base64.b64encode(b"s3cret").decode()}}
CHECK = ('echo "ids $(id -u) $(id -g) $(id -G)"; stat -c "mode %a group %g" /etc/creds/token; '
         'if cat /etc/creds/token >/dev/null 2>&1; then echo readable; else echo unreadable; fi; '
         'echo "said by uid $(id -u)" > "$JOBSET_RUNTIME_TERMINATION_LOG"')


def _pod(**security) -> dict:
    return {"securityContext": security,
            "volumes": [{"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o440}}]}


def _container() -> dict:
    return {**lf.sh(CHECK), "volumeMounts": [{"name": "creds", "mountPath": "/etc/creds"}]}


def test_run_as_user_with_fs_group_reads_the_secret_and_writes_its_message(tmp_path):
    why = lf.netns_unavailable()
    if why:
        pytest.skip(f"network namespaces are unavailable: {why}")
    js = lf.jobset("sc", [
        # The MPI manifest's arrangement: mode 0440, fsGroup; here also a user of its own.
        ("with", 1, 1, _container(), {}, _pod(runAsUser=4321, runAsGroup=4321, fsGroup=2345,
                                              supplementalGroups=[3456])),
        # The same user without the fsGroup: the root-owned 0440 file is closed to it.
        ("without", 1, 1, _container(), {}, _pod(runAsUser=4321, runAsGroup=4321)),
    ])
    r = lf.run_local(tmp_path, js, SECRET, args=["--timeout", "60"])
    assert r.returncode == 0, r.stdout + r.stderr
    lines = {job: [line for line in r.stdout.splitlines() if line.startswith(f"[sc-{job}-0-0-")] for job in
             ("with", "without")}
    with_, without = ("\n".join(lines[j]) for j in ("with", "without"))
    assert "ids 4321 4321 4321 2345 3456" in with_, with_
    assert "mode 440 group 2345" in with_ and "readable" in with_ and "unreadable" not in with_, with_
    assert "ids 4321 4321 4321" in without and "mode 440 group 0" in without and "unreadable" in without, without
    # The termination-log file is writable by the container's user, wherever the run dir is.
    assert re.search(r"pod sc-with-0-0-\w+: termination message: said by uid 4321", r.stdout), r.stdout


def test_empty_dir_and_nested_volume_files_as_the_kubelet_leaves_them(tmp_path):
    why = lf.netns_unavailable()
    if why:
        pytest.skip(f"network namespaces are unavailable: {why}")
    script = ('touch /scratch/x && echo scratch-writable; stat -c "sub %a %g" /etc/creds/sub; '
              'stat -c "term %a %u" "$JOBSET_RUNTIME_TERMINATION_LOG"')
    c = {**lf.sh(script), "volumeMounts": [{"name": "creds", "mountPath": "/etc/creds"},
                                           {"name": "scratch", "mountPath": "/scratch"}]}
    pod = {"securityContext": {"runAsUser": 4321, "runAsGroup": 4321, "fsGroup": 2345},
           "volumes": [{"name": "creds", "secret": {"secretName": "creds", "items": [
               {"key": "token", "path": "sub/token"}]}}, {"name": "scratch", "emptyDir": {}}]}
    r = lf.run_local(tmp_path, lf.jobset("ed", [("w", 1, 1, c, {}, pod)]), SECRET, args=["--timeout", "60"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "scratch-writable" in r.stdout, r.stdout  # emptyDir is 0777 (pkg/volume/emptydir)
    assert "sub 2755 2345" in r.stdout, r.stdout  # fsGroup over the whole tree, setgid directories
    assert "term 644 4321" in r.stdout, r.stdout  # the container's own, nobody else's to write


def test_groups_alone_keep_the_runners_user(tmp_path):
    why = lf.netns_unavailable()
    if why:
        pytest.skip(f"network namespaces are unavailable: {why}")
    js = lf.jobset("sg", [("w", 1, 1, _container(), {}, _pod(fsGroup=2345))])
    r = lf.run_local(tmp_path, js, SECRET, args=["--timeout", "60"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ids 0 0 0 2345" in r.stdout and "mode 440 group 2345" in r.stdout, r.stdout
