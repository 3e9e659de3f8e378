"""The daemon command read without a shell, and the authenticated channel that carries it."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from jobset_runtime.group import wire
from jobset_runtime.mpi import channel, command
from jobset_runtime.mpi.command import CommandError
from jobset_runtime.errors import ConfigError
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


@pytest.mark.parametrize("rest, says", [
    (["--", "--", "-x", "FOO", "--", "python", "t.py"], "doubled separator"),  # `manifest mpi ... -- -- OPTS -- PROG`
    (["--", "--", "python", "t.py"], "doubled separator"),
    (["--", "-np", "4", "python", "t.py"], "'-np' where the program should be"),  # options with no closing `--`
    (["--", "-x", "FOO", "--", "--", "python", "t.py"], "'--' after mpirun's options"),
    (["--", "-x", "FOO", "--", "-n", "2", "python"], "'-n' after mpirun's options"),
])
def test_a_second_separator_or_options_for_a_program_are_refused(rest, says):
    with pytest.raises(ConfigError) as e:
        split_command(rest)
    assert says in str(e.value)
    assert "launcher [options] -- MPIRUN-OPTIONS -- PROGRAM ARGS" in str(e.value)  # the expected form
    assert e.value.exit_code == 2


def test_the_separator_rule_leaves_valid_commands_alone():
    assert split_command(["--", "-x", "FOO", "--", "python", "-m", "mpi4py", "t.py"]) == (
        ["-x", "FOO"], ["python", "-m", "mpi4py", "t.py"])
    assert split_command(["--", "./a.out", "--", "--"]) == ([], ["./a.out", "--", "--"])  # the program's own
    assert split_command([]) == ([], [])


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
    chan = _watching(worker)
    worker.stopping("received SIGTERM")
    assert chan.recv(5) == {"t": "stopping", "cause": "received SIGTERM"}
    assert worker.wait(5).code == 143


def test_sigterm_while_the_main_thread_holds_the_workers_lock_still_stops_it(tmp_path):
    """The worker's SIGTERM handler runs in the main thread, maybe inside close()'s `with _lock`;
    it must not take that lock itself (the process would wait for ever).  A real signal, in a
    process of its own, delivered while its main thread holds the lock."""
    script = tmp_path / "sigterm.py"
    script.write_text(
        "import os, signal, sys\n"
        "from jobset_runtime.mpi.worker import WorkerServer\n"
        f"server = WorkerServer({KEY!r}, pod='w0', address='127.0.0.1', port=0).start()\n"
        "signal.signal(signal.SIGTERM, server.on_sigterm)  # as `python -m jobset_runtime.mpi worker` does\n"
        "with server._lock:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    held = list(server._daemons)  # the handler runs here, the lock held\n"
        "outcome = server.wait(10)\n"
        "server.close()\n"
        "print(outcome.code if outcome else None, outcome.cause if outcome else '')\n")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))}
    try:
        out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=30,
                             check=False)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker's SIGTERM handler waited for the lock its own thread held")
    assert out.stdout.strip() == "143 the worker was stopped (received SIGTERM)", out.stdout + out.stderr


def test_a_worker_that_stopped_reading_does_not_freeze_the_launchers_watch():
    """A heartbeat blocked on a worker that reads nothing (a frozen pod, its window full) must not
    hold the lock the launcher's main thread and listener take to learn of losses and daemons."""
    import threading

    from jobset_runtime.mpi.launcher import Watch

    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()  # never read
        try:
            client.setblocking(False)
            try:
                while True:
                    client.send(b"\0" * 65536)
            except BlockingIOError:
                pass  # the send buffer and the peer's window are full
            client.setblocking(True)
            session = wire.Session(b"k" * 32, send_dir=wire.TO_SERVER, recv_dir=wire.TO_MEMBER)
            watch = Watch({"js-worker-0-0": channel.Channel(client, session, "js-worker-0-0")})
            sender = threading.Thread(target=watch._send_all, args=({"t": "hb"},), daemon=True)
            sender.start()
            sender.join(0.5)
            assert sender.is_alive()  # blocked in sendall, as on a frozen pod
            asked = threading.Thread(target=watch.troubles, daemon=True)
            asked.start()
            asked.join(5)
            assert not asked.is_alive(), "troubles() waited for a send to a worker that reads nothing"
        finally:
            peer.close()  # unread data: a reset, which ends the blocked send
            client.close()


def test_daemons_do_not_inherit_the_pods_numbering():
    from jobset_runtime.mpi.worker import daemon_base_env

    env = daemon_base_env({"PATH": "/bin", "RANK": "3", "WORLD_SIZE": "4", "MASTER_ADDR": "x",
                           "JOBSET_RUNTIME_RANK": "3", "JOBSET_RUNTIME_HOSTNAME": "js-worker-0-2"})
    assert env == {"PATH": "/bin", "JOBSET_RUNTIME_HOSTNAME": "js-worker-0-2"}


# --- daemon reports on the watch channel ------------------------------------------------

def _daemon_script(tmp_path, body: str):
    """A fake "prted" (the allow-list checks the program name only) running `body` under sh."""
    prog = tmp_path / "prted"
    prog.write_text(f"#!/bin/sh\n{body}\n")
    prog.chmod(0o755)
    return prog


def _watching(worker):
    chan = channel.connect("127.0.0.1", worker.port, KEY, role="watch", pod="launcher")
    chan.send({"t": "hb"})
    deadline = time.monotonic() + 5
    while worker.watchers == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    return chan


def _exec(worker, prog):
    chan = channel.connect("127.0.0.1", worker.port, KEY, role="exec", pod="launcher")
    chan.send({"t": "exec", "argv": [str(prog)], "env": []})
    started = chan.recv(5)
    assert started["t"] == "started", started
    return chan, started["pid"]


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_a_daemon_killed_while_the_run_is_live_is_reported_and_its_ranks_are_killed(worker, tmp_path):
    # The "rank" keeps the daemon's stdout open: its end must be seen all the same.
    rank_pid = tmp_path / "rank.pid"
    prog = _daemon_script(tmp_path, f"sleep 60 & echo $! > {rank_pid}\nexec sleep 30")
    watch = _watching(worker)
    agent, pid = _exec(worker, prog)
    assert watch.recv(5) == {"t": "daemon", "pod": "w0", "name": "prted", "pid": pid, "state": "started",
                             "code": 0, "signal": 0}
    deadline = time.monotonic() + 5
    while not rank_pid.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    rank = int(rank_pid.read_text())
    os.kill(pid, signal.SIGKILL)
    assert watch.recv(5) == {"t": "daemon", "pod": "w0", "name": "prted", "pid": pid, "state": "exited",
                             "code": 137, "signal": 9}
    assert agent.recv(5) == {"t": "exit", "code": 137}  # as ssh would: the daemon's status
    deadline = time.monotonic() + 5
    while _state(rank) not in ("Z", "gone") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _state(rank) in ("Z", "gone")  # a rank left without its daemon is killed


@pytest.mark.parametrize("body, code", [("exit 0", 0), ("exit 3", 3)])
def test_a_daemon_that_exits_by_itself_is_reported_with_its_code(worker, tmp_path, body, code):
    watch = _watching(worker)
    agent, pid = _exec(worker, _daemon_script(tmp_path, body))
    assert watch.recv(5)["state"] == "started"
    assert watch.recv(5) == {"t": "daemon", "pod": "w0", "name": "prted", "pid": pid, "state": "exited",
                             "code": code, "signal": 0}
    assert agent.recv(5) == {"t": "exit", "code": code}


def test_a_daemon_stopped_because_its_agent_left_is_reported_as_stopped(worker, tmp_path):
    watch = _watching(worker)
    agent, pid = _exec(worker, _daemon_script(tmp_path, "exec sleep 30"))
    assert watch.recv(5)["state"] == "started"
    agent.close()  # mpirun ended the agent
    assert watch.recv(10) == {"t": "daemon", "pod": "w0", "name": "prted", "pid": pid, "state": "stopped",
                              "code": 0, "signal": 0}
    assert _state(pid) in ("Z", "gone")


def test_a_daemon_dying_of_a_signal_the_worker_did_not_send_as_its_agent_leaves_is_reported_killed(worker, tmp_path):
    """A SIGKILLed daemon's sockets close before it can be reaped, so mpirun (PRRTE: "lost
    communication", exit 0) and its agent may end first: the worker then finds it still there.
    It is not one the worker stopped: its end is the signal that killed it.  Here it dies of a
    SIGKILL of its own as the worker's SIGTERM comes."""
    ready = tmp_path / "trapped"
    watch = _watching(worker)
    agent, pid = _exec(worker, _daemon_script(tmp_path, f"trap 'kill -KILL $$' TERM\ntouch {ready}\nsleep 30 &\nwait"))
    assert watch.recv(5)["state"] == "started"
    deadline = time.monotonic() + 5
    while not ready.exists() and time.monotonic() < deadline:  # its trap is set
        time.sleep(0.02)
    agent.close()
    assert watch.recv(10) == {"t": "daemon", "pod": "w0", "name": "prted", "pid": pid, "state": "exited",
                              "code": 137, "signal": 9}


def test_daemons_are_not_reported_after_the_launcher_finished(worker, tmp_path):
    watch = _watching(worker)
    watch.send({"t": "finish", "code": 0, "cause": "ok"})
    assert worker.wait(5).code == 0
    assert watch.recv(5) is None  # the worker closed the channel, with nothing more to say


# --- the launcher's verdict on daemon reports -------------------------------------------

def _report(state, code=0, sig=0, pod="pi-worker-0-1-abcde", name="prted", pid=12):
    return {"t": "daemon", "pod": pod, "name": name, "pid": pid, "state": state, "code": code, "signal": sig}


def test_a_run_is_clean_only_if_every_daemon_exited_0_on_every_expected_worker():
    from jobset_runtime.mpi.launcher import unclean_ends

    hosts = ["pi-worker-0-0", "pi-worker-0-1"]
    clean = [(h, _report("exited", pid=i)) for i, h in enumerate(hosts)]
    assert unclean_ends(clean, hosts) == []
    assert unclean_ends([(hosts[0], _report("exited", pid=1)), (hosts[0], _report("exited", pid=2))],
                        []) == []  # e.g. MPICH's spawn: a proxy per job
    killed = [clean[0], (hosts[1], _report("exited", 137, 9))]
    assert unclean_ends(killed, hosts) == [
        "MPI daemon prted (pid 12) in worker pod pi-worker-0-1-abcde (pi-worker-0-1) was killed by SIGKILL"]
    assert unclean_ends([clean[0], (hosts[1], _report("exited", 7))], hosts)[0].endswith("exited with code 7")
    assert unclean_ends([clean[0], (hosts[1], _report("started"))], hosts)[0].endswith("never reported its end")
    assert "was stopped" in unclean_ends([clean[0], (hosts[1], _report("stopped"))], hosts)[0]
    assert unclean_ends(clean[:1], hosts) == [
        "no MPI daemon was started on worker pi-worker-0-1, where ranks were placed"]


def test_every_worker_is_expected_to_run_a_daemon_only_when_the_launcher_placed_the_ranks():
    from jobset_runtime.mpi.launcher import Options, expected_daemon_hosts

    hosts = ["w-0", "w-1"]
    assert expected_daemon_hosts(hosts, Options(program=["p"])) == hosts
    assert expected_daemon_hosts(hosts, Options(program=["p"], mpirun_args=["-n", "1"])) == []
    assert expected_daemon_hosts(hosts, Options(program=["p"], transport="ssh")) == []  # sshd starts them


def test_a_daemons_end_is_seen_without_pidfd_too(worker, tmp_path, monkeypatch):
    """Kernels before 5.3 and some sandboxes have no pidfd_open: a waiting thread stands in."""
    def no_pidfd(pid):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    watch = _watching(worker)
    agent, pid = _exec(worker, _daemon_script(tmp_path, "sleep 60 &\nexec sleep 30"))  # a "rank" holds the pipes
    assert watch.recv(5)["state"] == "started"
    os.kill(pid, signal.SIGKILL)
    assert watch.recv(5) == {"t": "daemon", "pod": "w0", "name": "prted", "pid": pid, "state": "exited",
                             "code": 137, "signal": 9}
    assert agent.recv(5) == {"t": "exit", "code": 137}


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
