"""The MPI worker's listening side under abuse, on loopback: trickling and reconnecting clients,
full handshake slots, a wrong token, NUL bytes, running out of descriptors.  Every attack is
bounded in count and time and stops by itself."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobset_runtime.admission import Limits
from jobset_runtime.errors import ConfigError, PeersTimeout
from jobset_runtime.group import wire
from jobset_runtime.mpi import channel
from jobset_runtime.mpi.launcher import Watch, connect_all
from jobset_runtime.mpi.worker import WorkerServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "group"))
from grouphelpers import WAIT, SlowClients, flood_descriptors, low_nofile, wait_until  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOKEN = b"0123456789abcdef0123456789abcdef"
KEY = channel.derive_key(TOKEN)


def held(n, address, source="127.0.0.2"):
    """n connections that announce a handshake frame and then send nothing more."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(address, timeout=WAIT, source_address=(source, 0))
        s.sendall(wire.HEADER.pack(100))
        socks.append(s)
    return socks


def test_a_trickling_client_is_cut_off_at_the_handshake_deadline_however_often_it_sends():
    """The deadline is for the whole handshake: a byte every 0.2 s (each read well within any
    per-read timeout) does not keep the connection, or its slot, past it."""
    worker = WorkerServer(KEY, pod="w0", address="127.0.0.1", port=0, limits=Limits(deadline=1.0)).start()
    try:
        s = socket.create_connection(("127.0.0.1", worker.port), timeout=WAIT)
        s.settimeout(0.2)
        trickle = wire.HEADER.pack(wire.MAX_HANDSHAKE_FRAME) + b"{" * wire.MAX_HANDSHAKE_FRAME
        closed, sent = False, 0
        end = time.monotonic() + WAIT
        while not closed and time.monotonic() < end:
            try:
                s.sendall(trickle[sent:sent + 1])
                sent += 1
                closed = s.recv(1) == b""
            except socket.timeout:
                pass
            except OSError:
                closed = True
        s.close()
        assert closed and sent < len(trickle)
        wait_until(lambda: worker.gate.under_way == 0, "the slot to be given back")
        assert worker.refusals.total == 1
    finally:
        worker.close()


def test_a_client_turned_away_retries_until_it_gets_in_and_a_wrong_token_is_not_retried():
    worker = WorkerServer(KEY, pod="w0", address="127.0.0.1", port=0,
                          limits=Limits(total=2, per_source=2, reserved=0, early_drop=1.0, deadline=1.5)).start()
    try:
        hogs = held(2, ("127.0.0.1", worker.port))  # every slot, until the deadline cuts them off
        chan = channel.connect_until("127.0.0.1", worker.port, KEY, role="watch", pod="launcher",
                                     deadline=time.monotonic() + WAIT)
        assert worker.refusals.total >= 1  # it was turned away at least once, and came back
        chan.send({"t": "hb"})
        chan.close()
        for s in hogs:
            s.close()
        # A worker that answers but cannot prove the token: raised at once, never NotAdmitted.
        other = channel.derive_key(b"another token, 32 bytes long....")
        start = time.monotonic()
        with pytest.raises(wire.ProtocolError, match="could not prove") as e:
            channel.connect_until("127.0.0.1", worker.port, other, role="watch", pod="launcher",
                                  deadline=time.monotonic() + WAIT)
        assert not isinstance(e.value, channel.NotAdmitted) and time.monotonic() - start < WAIT / 2
    finally:
        worker.close()


def test_a_worker_that_keeps_turning_the_launcher_away_is_a_timeout_not_a_configuration_error():
    """Exit 69 (restartable), where it used to be exit 2, which the failure policy makes FailJob."""
    worker = WorkerServer(KEY, pod="w0", address="127.0.0.1", port=0,
                          limits=Limits(total=1, per_source=1, reserved=0, early_drop=1.0, deadline=30)).start()
    watch = Watch()
    try:
        hog = held(1, ("127.0.0.1", worker.port))
        with pytest.raises(PeersTimeout, match="cannot open the MPI channel to worker w0") as e:
            connect_all({"w0": "127.0.0.1"}, worker.port, KEY, "launcher", 1.5, watch)
        assert not isinstance(e.value, ConfigError)
        hog[0].close()
    finally:
        watch.finish(1, "test over")
        worker.close()


def test_slow_reconnecting_clients_do_not_lock_the_launcher_out():
    """64 clients from one address, trickling and reconnecting the moment they are dropped: they
    keep at most their per-source share, and the launcher's watch and exec channels get in."""
    worker = WorkerServer(KEY, pod="w0", address="127.0.0.1", port=0, limits=Limits(deadline=1.0)).start()
    try:
        with SlowClients(("127.0.0.1", worker.port), n=64, source="127.0.0.2", every=0.3, limit=60) as flood:
            wait_until(lambda: worker.refusals.total >= 64, "the flood to be turned away")
            assert worker.gate.under_way <= worker.gate.limits.per_source
            for role in ("exec", "watch"):  # (closing the watch channel ends the worker)
                chan = channel.connect_until("127.0.0.1", worker.port, KEY, role=role, pod="launcher",
                                             deadline=time.monotonic() + WAIT)
                chan.close()
            assert flood.connections > 64
            assert worker.wait(WAIT).code == 75  # the watch channel was taken for the launcher's
    finally:
        worker.close()


def test_a_nul_byte_in_an_exec_request_is_refused_and_the_worker_keeps_serving(tmp_path):
    worker = WorkerServer(KEY, pod="w0", address="127.0.0.1", port=0).start()
    try:
        for argv, env in [(["/opt/mpi/bin/prted\0", "x"], []), (["prted", "a\0b"], []),
                          (["prted"], [["OPAL_PREFIX", "/p\0"]])]:
            chan = channel.connect("127.0.0.1", worker.port, KEY, role="exec", pod="launcher")
            chan.send({"t": "exec", "argv": argv, "env": env})
            answer = chan.recv(WAIT)
            assert answer == {"t": "refused", "cause": "a NUL byte in the command or its environment"}, answer
            chan.close()
        chan = channel.connect("127.0.0.1", worker.port, KEY, role="watch", pod="launcher")
        chan.send({"t": "finish", "code": 0, "cause": "ok"})
        assert worker.wait(WAIT).code == 0
    finally:
        worker.close()


def test_out_of_descriptors_the_worker_pauses_accepting_and_recovers(tmp_path):
    """A hard limit of 48 descriptors and 120 connections held open: accept() fails with EMFILE.
    The worker pauses instead of spinning (a few summary lines, not thousands), and serves the
    launcher once the connections are gone."""
    token = tmp_path / "token"
    token.write_bytes(TOKEN)
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JOBSET_RUNTIME_MPI_TOKEN_FILE": str(token),
           "JOBSET_RUNTIME_MPI_PORT": str(port)}
    env = {k: v for k, v in env.items() if k not in ("JOBSET_RUNTIME_TOPOLOGY",)}
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "jobset_runtime.mpi", "worker", "--launcher-timeout", "60"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=low_nofile)
    try:
        wait_until(lambda: b"serving the launcher" in log.read_bytes(), "the worker to listen")
        flood_descriptors(port)
        assert proc.poll() is None, log.read_text()  # it lived through it
        chan = channel.connect_until("127.0.0.1", port, KEY, role="watch", pod="launcher",
                                     deadline=time.monotonic() + WAIT)
        chan.send({"t": "finish", "code": 0, "cause": "ok"})
        assert proc.wait(WAIT) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    # Reported in the aggregated warning (here at the latest as the worker ends).
    assert "refused" in text and "accept() failed: Too many open files" in text, text[-3000:]
    assert len(text.splitlines()) < 20, text[-3000:]


def test_64_slow_reconnecting_clients_per_worker_do_not_stop_a_real_mpi_job(cluster):
    """Black box: real workers and launcher in namespace pods, real mpirun over the ssh-free
    transport, while 64 clients per worker trickle bytes into handshakes from the host's side of
    the bridge and reconnect the moment they are dropped.  Before admission control they held
    every handshake slot, the launcher's channel was closed at accept, and the launcher exited 2."""
    import mpifixtures as c
    from jobset_runtime import contract

    mpi = c.need("mpich")
    cl = cluster(2)
    floods = [SlowClients((cl.net.pods[host][1], contract.MPI_PORT), n=64, source=None, every=1.0, limit=90)
              for host in cl.workers]
    for flood in floods:
        flood.__enter__()
    try:
        cl.start_workers(env=mpi.env)
        # The flood is at the workers before the launcher arrives: every client in, once at least.
        wait_until(lambda: all(flood.connections >= 64 for flood in floods), "the flood to reach the workers",
                   timeout=60)
        proc = cl.start_launcher(["--mpirun", mpi.mpirun, "--timeout", "60", "--", sys.executable, c.PROG],
                                 env=mpi.env)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        assert "RESULT " in out
        assert cl.wait_workers(30) == {h: 0 for h in cl.workers}, {h: cl.log(h)[-2000:] for h in cl.workers}
        assert all(flood.connections > 64 for flood in floods)
    finally:
        for flood in floods:
            flood.__exit__(None, None, None)
    for host in cl.workers:  # the flood was reported, in a few aggregated lines
        lines = [line for line in cl.log(host).splitlines() if "unauthenticated connection" in line]
        assert 1 <= len(lines) <= 10, cl.log(host)[-3000:]
