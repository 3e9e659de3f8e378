"""The launcher's watch over a few hundred workers, each a real WorkerServer on its own loopback
address (the small version of bench/mpi_launcher_start.py): every worker gets one authenticated
channel, hears heartbeats for longer than it waits before calling the launcher gone, and ends
with the launcher's verdict; the servers of one process share one accept thread."""

import socket
import threading
import time

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


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_launcher_watches_hundreds_of_workers_and_every_one_ends_with_its_verdict():
    port = free_port()
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
