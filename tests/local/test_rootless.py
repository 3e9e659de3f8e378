"""Rootless mode: the namespace design inside a user namespace, run by a user who is not root.

Run as root, these tests make an unprivileged user (`jsrtest`, once) and run the
runner as that user with setpriv; run as another user, they run it directly.
"""

import os
import pwd
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

import localfixtures as lf

TEST_USER = "jsrtest"


def ok(r):
    return f"rc={r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"


def _user() -> tuple[int, int]:
    """(uid, gid) of a user who is not root, made if need be."""
    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    try:
        pw = pwd.getpwnam(TEST_USER)
    except KeyError:
        if shutil.which("useradd") is None:
            pytest.skip("running as root and `useradd` is missing: no user who is not root to test with")
        r = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
                           capture_output=True, text=True)
        if r.returncode not in (0, 9):  # 9: made meanwhile by a concurrent run
            pytest.skip(f"cannot make a user who is not root: {r.stderr.strip()}")
        pw = pwd.getpwnam(TEST_USER)
    return pw.pw_uid, pw.pw_gid


def _as(uid: int, gid: int) -> list:
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]


@pytest.fixture(scope="module")
def user():
    """(argv prefix, interpreter, env) that run this project's Python as a user who is not root."""
    if shutil.which("setpriv") is None and os.geteuid() == 0:
        pytest.skip("util-linux `setpriv` is missing")
    uid, gid = _user()
    env = lf.cli_env()
    env.update(HOME="/tmp", USER=pwd.getpwuid(uid).pw_name if uid else "nobody")
    # This interpreter may live where that user cannot reach (a pyenv under /root): then
    # the system's interpreter of the same version, with this environment's packages.
    paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    candidates = [(sys.executable, env["PYTHONPATH"])]
    same = shutil.which(f"python{sys.version_info[0]}.{sys.version_info[1]}", path="/usr/bin:/usr/local/bin")
    if same:
        candidates.append((same, os.pathsep.join([str(lf.ROOT), *sorted(paths)])))
    probe = "import dns, yaml, jobset_runtime.local.cli"
    runnable = []
    for python, pypath in candidates:
        e = dict(env, PYTHONPATH=pypath)
        r = subprocess.run([*_as(uid, gid), python, "-c", probe], env=e, capture_output=True, text=True, cwd="/")
        if r.returncode == 0:
            runnable.append((python, e))
    if not runnable:
        pytest.skip(f"user {uid} cannot run this project's Python (make the checkout and the interpreter "
                    f"readable by others): {r.stderr.strip()[-300:]}")
    python, e = runnable[0]
    r = subprocess.run([*_as(uid, gid), python, "-c",
                        "import sys; from jobset_runtime.local.pods import rootless_available as a; "
                        "ok, why = a(); print(why); sys.exit(0 if ok else 1)"],
                       env=e, capture_output=True, text=True, cwd="/")
    if r.returncode != 0:
        pytest.skip(f"unprivileged user namespaces are not allowed here: {r.stdout.strip() or r.stderr.strip()}")
    # Inside the user namespace, files of unmapped owners are reached by their "other" bits only.
    for python, e in runnable:
        r = subprocess.run([*_as(uid, gid), "unshare", "--user", "--map-root-user", "--", python, "-c", probe],
                           env=e, capture_output=True, text=True, cwd="/")
        if r.returncode == 0:
            break
    else:
        pytest.skip(f"this project's Python cannot run inside a user namespace (an interpreter under a "
                    f"directory only root may search?): {r.stderr.strip()[-300:]}")
    return {"prefix": _as(uid, gid), "python": python, "env": e, "uid": uid, "gid": gid}


@pytest.fixture
def work(user):
    d = Path(tempfile.mkdtemp(prefix="jsr-rootless-test-"))
    os.chown(d, user["uid"], user["gid"])
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _argv(user, work, js, *args) -> list:
    path = work / "jobset.yaml"
    path.write_text(yaml.safe_dump(js, sort_keys=False))
    return [*user["prefix"], user["python"], "-m", "jobset_runtime.local.cli", "run", str(path),
            "--run-dir", str(work / "run"), *args]


def _state_dirs(uid) -> set:
    """The rootless runner's namespace-file directories (tmpfs mountpoints) of this user."""
    found = set()
    for parent in ("/tmp", f"/run/user/{uid}"):
        try:
            for n in os.listdir(parent):
                p = os.path.join(parent, n)
                if n.startswith("jsr-") and not n.startswith("jsr-rootless-test-") and os.stat(p).st_uid == uid:
                    found.add(p)
        except OSError:
            pass
    return found


def _nothing_left(user, token, netns_before, states_before):
    for _ in range(50):  # the kernel reaps a dying PID namespace asynchronously
        if not lf.processes_with(token):
            break
        time.sleep(0.05)
    assert lf.processes_with(token) == []
    assert lf.netns_names() <= netns_before  # nothing in the host's /run/netns
    assert _state_dirs(user["uid"]) <= states_before
    # The runner's mounts live in its own mount namespace; none may reach the host's
    # (netns mode's /run/netns entries of concurrent runs aside).
    assert [m for m in lf.mounts_mentioning("jsr-") if "/run/netns/" not in m] == []


SERVER = r"""
import os, socket, sys
me = socket.gethostname()
assert me == "rl-server-0-0", me
srv = socket.create_server(("", 7000))
open(os.path.join(sys.argv[1], "written-by-pod"), "w").close()
for _ in range(2):
    conn, (peer, _) = srv.accept()
    name = conn.recv(100).decode()
    print("served", name, "from", peer, "uid", os.getuid(), flush=True)
    # The client by its name under the subdomain: glibc, the pod's resolv.conf search path, our DNS.
    back = socket.create_connection((name + ".rl", 7001), timeout=10)
    back.sendall(b"hello " + name.encode())
    back.close()
"""

CLIENT = r"""
import socket, sys, time
me = socket.gethostname()
listener = socket.create_server(("", 7001))
for _ in range(200):
    try:
        c = socket.create_connection(("rl-server-0-0.rl", 7000), timeout=5)
        break
    except OSError:
        time.sleep(0.05)
c.sendall(me.encode())
c.close()
conn, _ = listener.accept()
print(conn.recv(100).decode(), "via", socket.gethostbyname("rl-server-0-0.rl"), flush=True)
"""


def test_auto_picks_rootless_and_pods_talk_by_hostname(user, work):
    token = "tok-" + uuid.uuid4().hex
    js = lf.jobset("rl", [("server", 1, 1, {"command": [user["python"], "-c", SERVER, str(work), token]}),
                          ("client", 1, 2, {"command": [user["python"], "-c", CLIENT, token]})])
    netns_before, states_before = lf.netns_names(), _state_dirs(user["uid"])
    r = subprocess.run(_argv(user, work, js, "--timeout", "60"), env=user["env"], capture_output=True,
                       text=True, timeout=90, cwd=work)
    assert r.returncode == 0, ok(r)
    assert "mode rootless" in r.stdout and "loopback" not in r.stdout + r.stderr, ok(r)
    for i in (0, 1):
        assert f"hello rl-client-0-{i} via 198.18.0.2" in r.stdout, ok(r)
        # Root inside the user namespace...
        assert f"served rl-client-0-{i} from 198.18." in r.stdout and "uid 0" in r.stdout, ok(r)
    # ...and the invoking user on the host.
    assert (work / "written-by-pod").stat().st_uid == user["uid"]
    assert "Completed" in r.stdout.split("NAME")[1]
    _nothing_left(user, token, netns_before, states_before)


STUBBORN = r"""
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(1000)", sys.argv[1]])
print("up", flush=True)
time.sleep(1000)
"""


def _start_stubborn(user, work):
    token = "tok-" + uuid.uuid4().hex
    c = {"command": [user["python"], "-c", STUBBORN, token]}
    js = lf.jobset("stuck", [("w", 1, 2, c, {}, {"terminationGracePeriodSeconds": 1})])
    p = subprocess.Popen(_argv(user, work, js, "--timeout", "60", "--mode", "rootless"), env=user["env"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=work)
    return p, token, lf.wait_stubborn_up(p, token)


def test_ctrl_c_leaves_nothing_behind(user, work):
    netns_before, states_before = lf.netns_names(), _state_dirs(user["uid"])
    p, token, seen = _start_stubborn(user, work)
    p.send_signal(signal.SIGINT)  # setpriv execs the runner: p.pid is the runner's
    rest, _ = p.communicate(timeout=30)
    assert p.returncode == 130, "".join(seen) + rest
    assert "Interrupted" in rest
    _nothing_left(user, token, netns_before, states_before)


def test_killed_runner_takes_every_pod_process_with_it(user, work):
    netns_before, states_before = lf.netns_names(), _state_dirs(user["uid"])
    p, token, seen = _start_stubborn(user, work)
    p.kill()  # no chance to clean up: the kernel must
    p.communicate(timeout=30)
    for _ in range(100):
        if not lf.processes_with(token):
            break
        time.sleep(0.05)
    assert lf.processes_with(token) == [], "".join(seen)
    assert lf.netns_names() <= netns_before
    assert [m for m in lf.mounts_mentioning("jsr-") if "/run/netns/" not in m] == []
    # Killed outright, the runner's parent cannot remove the empty directory its
    # namespace files were mounted on (the tmpfs itself went with the mount namespace).
    for d in _state_dirs(user["uid"]) - states_before:
        assert os.listdir(d) == []
        os.rmdir(d)


def test_security_context_ids_are_named_as_not_applied(user, work):
    """Only the host's root can run a container as another user: rootless mode says so and
    runs it as the invoking user (root inside the user namespace)."""
    js = lf.jobset("sc", [("w", 1, 1, {"command": ["/bin/sh", "-c", "echo uid=$(id -u)"]}, {},
                           {"securityContext": {"runAsUser": 1000, "fsGroup": 1000}})])
    r = subprocess.run(_argv(user, work, js, "--timeout", "60"), env=user["env"], capture_output=True,
                       text=True, timeout=90, cwd=work)
    assert r.returncode == 0, ok(r)
    assert "notice: rootless mode" in r.stdout and "are not applied" in r.stdout, ok(r)
    assert "uid=0" in r.stdout, ok(r)
