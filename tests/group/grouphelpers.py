"""Helpers for the group channel tests: member processes, raw sockets, a recording proxy."""

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "peers"))  # the DNS test helpers

from dnsfixtures import SlowDns  # noqa: E402,F401  (re-exported for the group tests)
ROOT = HERE.parent.parent
WAIT = 20.0  # upper bound for any one awaited event; never a timing assertion


class Proc:
    """tests/group/groupproc.py in its own process, driven over stdin, events read from stdout."""

    def __init__(self, *args, **popen):
        """popen: more for subprocess.Popen (stderr, preexec_fn)."""
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.p = subprocess.Popen([sys.executable, str(HERE / "groupproc.py"), *map(str, args)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, **popen)
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.events.put(json.loads(line))
        self.events.put({"event": "eof"})

    def expect(self, event, timeout=WAIT):
        while True:
            got = self.events.get(timeout=timeout)
            if got["event"] == event:
                return got
            if got["event"] in ("error", "eof"):
                raise AssertionError(f"expected {event}, got {got}")

    def send(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def kill(self, sig=signal.SIGKILL):
        os.kill(self.p.pid, sig)

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(timeout=WAIT)


def raw_connect(address):
    s = socket.create_connection(address, timeout=WAIT)
    s.settimeout(WAIT)
    return s


def closed_by_peer(sock) -> bool:
    """Read until the server closes the connection (True) or sends something (False)."""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
            # the server may answer a hello with its challenge before refusing the proof
            if b'"challenge"' not in data and b'"proof"' not in data:
                return False
    except ConnectionResetError:
        return True


class RecordingProxy:
    """A TCP relay in front of the server that keeps every byte a member sent."""

    def __init__(self, target):
        self.target = target
        self.sent = bytearray()
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.address = self.lsock.getsockname()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        client, _ = self.lsock.accept()
        upstream = socket.create_connection(self.target)
        threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src, dst, record):
        try:
            while data := src.recv(65536):
                if record:
                    self.sent += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def fqdn(pod: str) -> str:
    """A pod's name in the test JobSet's headless Service (js, namespace default)."""
    return f"{pod}.js.default.svc.cluster.local"


def wait_until(cond, what: str, timeout: float = WAIT) -> None:
    """Until cond() holds; an AssertionError naming `what` after `timeout`."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


NOFILE_LIMIT = 48  # descriptors of a server under the descriptor flood: fewer than it takes


def low_nofile() -> None:
    """preexec_fn: the server process may open only NOFILE_LIMIT descriptors, hard limit included."""
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE_LIMIT, NOFILE_LIMIT))


def flood_descriptors(port: int, n: int = 120, hold: float = 3.0) -> None:
    """`n` connections to 127.0.0.1:`port`, each from a loopback address of its own (so no
    per-source cap applies), held `hold` seconds and closed: a server under low_nofile() runs
    out of descriptors, and accept() fails with EMFILE, for that long."""
    socks = []
    try:
        for i in range(n):
            try:
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=WAIT,
                                                      source_address=(f"127.0.1.{i + 1}", 0)))
            except OSError:
                break
        time.sleep(hold)  # the exposure itself: how long the server goes without descriptors
    finally:
        for s in socks:
            s.close()


def make_world(n):
    from jobset_runtime.group import MemberId

    return [MemberId(r, f"pod-{r}") for r in range(n)]


def join_all(members, timeout=WAIT):
    """join() every member at once (the gang start needs them all), re-raising the first error."""
    from jobset_runtime.errors import JobSetRuntimeError

    errors = []

    def run(m):
        try:
            m.join(timeout)
        except JobSetRuntimeError as e:  # handed to the test
            errors.append(e)

    threads = [threading.Thread(target=run, args=(m,)) for m in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


class SlowClients:
    """`n` unauthenticated clients, each announcing a full-size handshake frame and then sending
    one byte of it every `every` seconds, reconnecting at once whenever the server drops it (the
    lockout attack on a handshake deadline that is per read).  From `source` (another loopback
    address, or the host's side of a pod bridge); stops by itself after `limit` seconds.

    The clients run in a process of their own, as an attacker's would: threads reconnecting
    thousands of times a second in the test's own process would starve the servers under test
    of Python's interpreter lock, which no real attacker can do."""

    def __init__(self, address, n: int = 64, source: str | None = "127.0.0.2", every: float = 0.5,
                 limit: float = 60.0):
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self.address, self.n, self.source, self.every, self.limit = tuple(address), n, source, every, limit
        self._count = ctx.Value("l", 0)  # connections accepted by the kernel (some closed at once by the server)
        self._stop = ctx.Event()
        self._proc = ctx.Process(target=self._main, daemon=True)

    @property
    def connections(self) -> int:
        return self._count.value

    def __enter__(self):
        self._proc.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()

    def _main(self):
        end = time.monotonic() + self.limit
        threads = [threading.Thread(target=self._run, args=(end,), daemon=True) for _ in range(self.n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _run(self, end: float):
        from jobset_runtime.group import wire

        while not self._stop.is_set() and time.monotonic() < end:
            try:
                s = socket.create_connection(self.address, timeout=2,
                                             source_address=(self.source, 0) if self.source else None)
            except OSError:
                self._stop.wait(0.01)
                continue
            with self._count.get_lock():
                self._count.value += 1
            try:
                s.settimeout(self.every)
                trickle = wire.HEADER.pack(wire.MAX_HANDSHAKE_FRAME) + b"{" * wire.MAX_HANDSHAKE_FRAME
                for i in range(len(trickle)):
                    if self._stop.is_set() or time.monotonic() > end:
                        break
                    s.sendall(trickle[i:i + 1])
                    try:
                        if s.recv(1) == b"":
                            break  # dropped: reconnect at once
                    except socket.timeout:
                        pass
            except OSError:
                pass
            finally:
                s.close()
