"""The daemon command read without a shell, and the authenticated channel that carries it."""

import os
import socket
import subprocess
import sys
import time

import pytest

from jobset_runtime.group import wire
from jobset_runtime.mpi import channel, command
from jobset_runtime.mpi.command import CommandError
from jobset_runtime.mpi.launcher import program_argv, split_command
from jobset_runtime.mpi.worker import WorkerServer

# What the installed wheels really pass to their agent (recorded from Open MPI 5.0.11 and MPICH 5.0.2).
PRTE_WORDS = [
    "PRTE_PREFIX=/tmp/v;export PRTE_PREFIX;PMIX_PREFIX=/tmp/v;export PMIX_PREFIX;"
    "LD_LIBRARY_PATH=/tmp/v/lib:/tmp/v/lib:$LD_LIBRARY_PATH;export LD_LIBRARY_PATH;/tmp/v/bin/prted",
    "--allow-run-as-root", "--prtemca", "ess", '"env"', "--prtemca", "prte_hnp_uri",
    '"prterun-vm-9281@0.0;tcp://192.0.2.2:38949:64,24;tcp6://[fd00::2]:54097:64,24"', "--tree-spawn",
]
# Open MPI 4.1.8 (ORTE) and Intel MPI 2021.18, recorded the same way.
ORTE_WORDS = [
    "OPAL_PREFIX=/tmp/v/opt/openmpi4", ";", "export", "OPAL_PREFIX;", "PATH=/tmp/v/opt/openmpi4/bin:$PATH", ";",
    "export", "PATH", ";", "LD_LIBRARY_PATH=/tmp/v/opt/openmpi4/lib:${LD_LIBRARY_PATH:-}", ";", "export",
    "LD_LIBRARY_PATH", ";", "DYLD_LIBRARY_PATH=/tmp/v/opt/openmpi4/lib:${DYLD_LIBRARY_PATH:-}", ";", "export",
    "DYLD_LIBRARY_PATH", ";", "/tmp/v/opt/openmpi4/bin/orted", "-mca", "orte_leave_session_attached", '"1"',
    "-mca", "ess", '"env"', "-mca", "ess_base_jobid", '"903544"',
]
INTEL_ARGS = ["-q", "-x", "hostA", "/tmp/v/opt/impi/bin//hydra_bstrap_proxy", "--upstream-host", "10.0.0.9",
              "--upstream-port", "45623", "--pgid", "0", "--launcher", "ssh", "--launcher-exec", "/tmp/agent",
              "--tree-width", "4", "/tmp/v/opt/impi/bin//hydra_pmi_proxy", "--usize", "-1"]
HYDRA_ARGS = ["-x", "hostB", '"/tmp/v/opt/mpich/bin/hydra_pmi_proxy"', "--control-port", "vm:40669", "--proxy-id", "1"]


def test_prrte_command():
    cmd = command.parse(PRTE_WORDS)
    assert cmd.argv == ("/tmp/v/bin/prted", "--allow-run-as-root", "--prtemca", "ess", "env", "--prtemca",
                        "prte_hnp_uri", "prterun-vm-9281@0.0;tcp://192.0.2.2:38949:64,24;tcp6://[fd00::2]:54097:64,24",
                        "--tree-spawn")
    assert cmd.assignments[2] == ("LD_LIBRARY_PATH", "/tmp/v/lib:/tmp/v/lib:$LD_LIBRARY_PATH")
    command.check_allowed(cmd)
    env = command.environment(cmd, {"LD_LIBRARY_PATH": "/x", "HOME": "/root"})
    assert env["LD_LIBRARY_PATH"] == "/tmp/v/lib:/tmp/v/lib:/x" and env["PRTE_PREFIX"] == "/tmp/v"
    assert command.expand("${A}-$B-$C", {"A": "1", "B": "2"}) == "1-2-"


def test_orte_command_and_default_expansions():
    cmd = command.parse(ORTE_WORDS)
    command.check_allowed(cmd)
    assert cmd.argv[:4] == ("/tmp/v/opt/openmpi4/bin/orted", "-mca", "orte_leave_session_attached", "1")
    env = command.environment(cmd, {"PATH": "/usr/bin"})
    assert env["OPAL_PREFIX"] == "/tmp/v/opt/openmpi4" and env["PATH"] == "/tmp/v/opt/openmpi4/bin:/usr/bin"
    assert env["LD_LIBRARY_PATH"] == "/tmp/v/opt/openmpi4/lib:"  # unset: the default, here empty
    assert command.expand("${A:-x}|${B:-x}|${B-x}|${C-y}", {"A": "1", "B": ""}) == "1|x||y"


def test_intel_bootstrap_proxy_command():
    host, words = command.split_agent_args(INTEL_ARGS)
    assert host == "hostA"
    cmd = command.parse(words)
    command.check_allowed(cmd)
    assert cmd.argv[0] == "/tmp/v/opt/impi/bin//hydra_bstrap_proxy" and cmd.assignments == ()


def test_hydra_command():
    host, words = command.split_agent_args(HYDRA_ARGS)
    assert host == "hostB"
    cmd = command.parse(words)
    assert cmd.argv[0] == "/tmp/v/opt/mpich/bin/hydra_pmi_proxy" and cmd.assignments == ()
    command.check_allowed(cmd)
    assert command.split_agent_args(["-p", "2222", "-o", "X=y", "h", "prted"]) == ("h", ["prted"])


@pytest.mark.parametrize("words", [
    ["prted; rm -rf /"],
    ["prted | sh"],
    ["prted > /etc/passwd"],
    ["(prted)"],
    ["prted `id`"],
    ["prted $(id)"],
    ["echo hi; prted"],
    ["prted 'unbalanced"],
])
def test_shell_constructs_are_refused(words):
    with pytest.raises(CommandError):
        command.check_allowed(command.parse(words))


@pytest.mark.parametrize("words", [["/bin/sh", "-c", "id"], ["LD_PRELOAD=/x.so", "prted"], ["python3", "x.py"]])
def test_only_mpi_daemons_with_harmless_env(words):
    with pytest.raises(CommandError):
        command.check_allowed(command.parse(words))


def test_split_command_and_program():
    assert split_command(["--", "python", "t.py"]) == ([], ["python", "t.py"])
    assert split_command(["--", "-x", "FOO", "--", "python", "t.py", "--", "a"]) == (["-x", "FOO"], ["python", "t.py", "--", "a"])
    assert split_command(["python", "t.py", "--", "a"]) == ([], ["python", "t.py", "--", "a"])
    assert program_argv(["python3", "t.py"]) == ["python3", "-m", "mpi4py", "t.py"]
    assert program_argv(["python", "-m", "mpi4py", "t.py"]) == ["python", "-m", "mpi4py", "t.py"]
    assert program_argv(["t.py", "a"], python="/py") == ["/py", "-m", "mpi4py", "t.py", "a"]
    assert program_argv(["./a.out"]) == ["./a.out"]


# --- the channel -----------------------------------------------------------------------

KEY = channel.derive_key(b"0123456789abcdef0123456789abcdef")


@pytest.fixture
def worker():
    server = WorkerServer(KEY, pod="w0", address="127.0.0.1", port=0, vanish_s=1.0).start()
    yield server
    server.close()


def test_wrong_token_is_refused_and_nothing_runs(worker, tmp_path):
    other = channel.derive_key(b"another token, 32 bytes long....")
    with pytest.raises((wire.ProtocolError, OSError)):
        channel.connect("127.0.0.1", worker.port, other, role="exec", pod="x")
    assert worker.wait(0.2) is None and worker.watchers == 0


def test_unauthenticated_exec_frame_is_ignored(worker, tmp_path):
    marker = tmp_path / "ran"
    s = socket.create_connection(("127.0.0.1", worker.port))
    s.sendall(wire.frame(wire.encode({"t": "exec", "argv": ["touch", str(marker)], "env": []})))
    s.settimeout(2)
    assert s.recv(100) == b""  # closed without a reply
    s.close()
    time.sleep(0.2)
    assert not marker.exists()


def test_exec_relays_output_and_exit_code(worker, tmp_path):
    # A fake "prted" in an installation of its own (PRTE_PREFIX must point inside it): prints and exits 3.
    (tmp_path / "p" / "bin").mkdir(parents=True)
    prog = tmp_path / "p" / "bin" / "prted"
    prog.write_text(f"#!{sys.executable}\nimport os,sys\nprint('hello', os.environ['PRTE_PREFIX'])\n"
                    "print('oops', file=sys.stderr)\nsys.exit(3)\n")
    prog.chmod(0o755)
    env = {**os.environ, "JOBSET_RUNTIME_MPI_PORT": str(worker.port)}
    token = tmp_path / "token"
    token.write_bytes(b"0123456789abcdef0123456789abcdef")
    env["JOBSET_RUNTIME_MPI_TOKEN_FILE"] = str(token)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-m", "jobset_runtime.mpi", "agent", "127.0.0.1",
                          f"PRTE_PREFIX={tmp_path}/p;export PRTE_PREFIX;{prog}"], env=env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 3, out.stderr
    assert out.stdout == f"hello {tmp_path}/p\n" and "oops" in out.stderr


def test_exec_refuses_a_non_daemon_even_when_authenticated(worker, tmp_path):
    chan = channel.connect("127.0.0.1", worker.port, KEY, role="exec", pod="x")
    chan.send({"t": "exec", "argv": ["/bin/touch", str(tmp_path / "ran")], "env": []})
    assert chan.recv(5)["t"] == "refused"
    assert not (tmp_path / "ran").exists()


def test_watch_finish_and_vanish(worker):
    chan = channel.connect("127.0.0.1", worker.port, KEY, role="watch", pod="launcher")
    chan.send({"t": "hb"})
    chan.send({"t": "finish", "code": 0, "cause": "ok"})
    assert worker.wait(5).code == 0
    other = WorkerServer(KEY, pod="w1", address="127.0.0.1", port=0, vanish_s=0.5).start()
    try:
        chan2 = channel.connect("127.0.0.1", other.port, KEY, role="watch", pod="launcher")
        outcome = other.wait(5)  # no heartbeat: the launcher is taken for gone
        assert outcome.code == 75 and "gone" in outcome.cause
        chan2.close()
    finally:
        other.close()


def test_replayed_frame_is_rejected(worker):
    chan = channel.connect("127.0.0.1", worker.port, KEY, role="watch", pod="launcher")
    sealed = chan.session.seal({"t": "hb"})
    chan.sock.sendall(sealed)
    chan.sock.sendall(sealed)  # the same bytes again: wrong sequence number
    outcome = worker.wait(5)
    assert outcome.code == 75


def test_worker_says_it_is_stopped(worker):
    chan = channel.connect("127.0.0.1", worker.port, KEY, role="watch", pod="launcher")
    chan.send({"t": "hb"})
    time.sleep(0.2)
    worker.stopping("received SIGTERM")
    assert chan.recv(5) == {"t": "stopping", "cause": "received SIGTERM"}
    assert worker.wait(5).code == 143


def test_daemons_do_not_inherit_the_pods_numbering():
    from jobset_runtime.mpi.worker import daemon_base_env

    env = daemon_base_env({"PATH": "/bin", "RANK": "3", "WORLD_SIZE": "4", "MASTER_ADDR": "x",
                           "JOBSET_RUNTIME_RANK": "3", "JOBSET_RUNTIME_HOSTNAME": "js-worker-0-2"})
    assert env == {"PATH": "/bin", "JOBSET_RUNTIME_HOSTNAME": "js-worker-0-2"}


def _installation(tmp_path, name="prted"):
    """An MPI-like installation: PREFIX/bin/DAEMON, executable."""
    prefix = tmp_path / "mpi"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "lib").mkdir()
    daemon = prefix / "bin" / name
    daemon.write_text("#!/bin/sh\nexit 0\n")
    daemon.chmod(0o755)
    return prefix, daemon


def test_confine_keeps_a_daemon_to_its_installation(tmp_path):
    prefix, daemon = _installation(tmp_path)
    base = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": "/usr/lib/x"}
    ok = command.parse([f"PRTE_PREFIX={prefix};export PRTE_PREFIX;LD_LIBRARY_PATH={prefix}/lib:$LD_LIBRARY_PATH;"
                        f"PATH={prefix}/bin:$PATH;{daemon}", "--tree-spawn"])
    assert command.confine(ok, base).argv == (str(daemon), "--tree-spawn")
    for words, why in [
        (f"LD_LIBRARY_PATH=/tmp/evil:$LD_LIBRARY_PATH;{daemon}", "may add only directories of the MPI installation"),
        (f"PATH=/tmp/evil:$PATH;{daemon}", "may add only directories"),
        (f"LD_LIBRARY_PATH={prefix}/../../evil;{daemon}", "may add only directories"),
        (f"OPAL_PREFIX=/;{daemon}", "is outside the MPI installation"),
        ("/no/such/bin/prted", "is not an executable file on this worker"),
    ]:
        with pytest.raises(CommandError, match=why):
            command.confine(command.parse([words]), base)


def test_confine_resolves_a_bare_daemon_on_the_workers_own_path_and_sees_through_links(tmp_path):
    prefix, daemon = _installation(tmp_path)
    # A bare name is looked up on the worker's PATH, not on the one the request sets.
    cmd = command.parse([f"PATH={prefix}/bin:$PATH;prted"])
    with pytest.raises(CommandError, match="not an executable file"):
        command.confine(cmd, {"PATH": "/usr/bin:/bin"})
    assert command.confine(cmd, {"PATH": f"{prefix}/bin"}).argv == (str(daemon),)
    # A link named like a daemon that leads elsewhere (a shell) is what it leads to.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "prted").symlink_to("/bin/sh")
    with pytest.raises(CommandError, match="not an MPI daemon"):
        command.confine(command.parse([str(tmp_path / "bin" / "prted"), "-c", "id"]), {"PATH": "/bin"})
