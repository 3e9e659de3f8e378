"""The launcher's watch over a few hundred workers, each a real WorkerServer on its own loopback
address (the small version of bench/mpi_launcher_start.py): every worker gets one authenticated
channel, hears heartbeats for longer than it waits before calling the launcher gone, and ends
with the launcher's verdict; the servers of one process share one accept thread."""

import threading
import time

from jobset_runtime.addresses import free_port
from jobset_runtime.mpi import channel
from jobset_runtime.mpi.launcher import Watch, connect_all
from jobset_runtime.mpi.worker import WorkerServer
from jobset_runtime.peers import wait_for_ports

TOKEN = b"0123456789abcdef0123456789abcdef"
KEY = channel.derive_key(TOKEN)
WORKERS = 300
VANISH_S = 2.0  # each worker leaves after this long without a heartbeat (the product's is 5 s)


def address(i):
    return f"127.77.{i // 250}.{1 + i % 250}"


def test_a_launcher_watches_hundreds_of_workers_and_every_one_ends_with_its_verdict():
    port = free_port(*(address(i) for i in range(WORKERS)))
    before = sum(t.name == "mpi-worker-accept" for t in threading.enumerate())
    servers = [WorkerServer(KEY, pod=f"w-{i}", address=address(i), port=port, vanish_s=VANISH_S).start()
               for i in range(WORKERS)]
    watch = Watch().start()
    try:
        assert sum(t.name == "mpi-worker-accept" for t in threading.enumerate()) <= before + 1
        hosts = {f"w-{i}": address(i) for i in range(WORKERS)}
        assert wait_for_ports(hosts, port, deadline=time.monotonic() + 30) == hosts  # probes first, as the launcher
        connect_all(hosts, port, KEY, "launcher", 60, watch)
        assert sorted(s.watchers for s in servers) == [1] * WORKERS
        # Past every worker's vanish time: only heartbeats keep them.
        time.sleep(2 * VANISH_S)
        assert not watch.troubles()
        assert all(s.wait(0) is None for s in servers)
        watch.finish(0, "mpirun succeeded")
        outcomes = [s.wait(30) for s in servers]
        assert [o.code for o in outcomes] == [0] * WORKERS, {o.cause for o in outcomes if o.code}
    finally:
        watch.finish(1, "test over")
        for s in servers:
            s.close()


def test_a_heartbeat_round_and_channel_openings_take_turns(monkeypatch):
    """A round waits for the handshake under way, and a handshake that would start during a
    round waits for its end: with the handshakes' threads busy, each of a round's sends would
    otherwise wait a switch interval for the interpreter lock (docs/mpi.md, At the record scale)."""
    from jobset_runtime.mpi import launcher

    monkeypatch.setattr(launcher, "BEAT_WAIT_S", 60.0)  # the order, not the timing, is under test
    watch = Watch()
    order = []
    inside, release = threading.Event(), threading.Event()
    monkeypatch.setattr(watch, "_send_all", lambda msg: order.append(f"round {msg['t']}") or [])

    def opening():
        with watch.handshake():
            inside.set()
            release.wait(30)
            order.append("handshake done")

    first = threading.Thread(target=opening)
    first.start()
    assert inside.wait(30)
    rounds = threading.Thread(target=watch.beat_once)
    rounds.start()
    while not watch._beating:  # the round is waiting for the handshake under way
        time.sleep(0.01)
    inside.clear()
    second = threading.Thread(target=opening)
    second.start()
    time.sleep(0.2)
    assert not inside.is_set()  # no handshake starts while a round is due
    release.set()
    for t in (first, rounds, second):
        t.join(30)
    assert order == ["handshake done", "round hb", "handshake done"]


def test_a_launcher_that_cannot_hold_a_channel_per_worker_says_so_before_it_starts():
    import pytest

    from jobset_runtime.errors import ConfigError
    from jobset_runtime.mpi.launcher import DESCRIPTORS_BESIDE_CHANNELS, check_descriptors

    check_descriptors(12_736, 1_048_576, 1_048_576)
    check_descriptors(896, 1024, 1024)  # a container's usual soft limit still holds 896 channels
    with pytest.raises(ConfigError, match=r"12736 MPI workers need about 12864 open files.*may open 1024 \(hard "
                                          r"limit 4096\): raise the container's nofile limit"):
        check_descriptors(12_736, 1024, 4096)
    with pytest.raises(ConfigError):
        check_descriptors(20_000 - DESCRIPTORS_BESIDE_CHANNELS + 1, 20_000, 20_000)
