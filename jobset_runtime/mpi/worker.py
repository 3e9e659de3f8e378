"""`python -m jobset_runtime.mpi worker`: serve the launcher, then leave with its verdict.

The worker listens on contract.MPI_PORT for authenticated connections only:
* `watch` (the launcher): heartbeats, then `finish {code}`.  The worker exits
  0 when the launcher's mpirun succeeded, EXIT_PEER_FAILED when it failed, and
  EXIT_PEER_FAILED too when the launcher vanished (no heartbeat for
  VANISH_S, or the connection dropped without `finish`).  So the JobSet ends
  on its own, whatever its successPolicy, and no worker lingers.
* `exec` (the remote-start agent, ssh-free transport): start one MPI daemon
  from an argv list (never a shell), stream its output back, report its exit
  code, and kill it if the agent goes away.
While the launcher's run is live (a watch channel open, no `finish` yet), every
daemon's start and end is also reported on the watch channel (`daemon`): mpirun
does not always fail when a remote daemon dies (PRRTE 5.0.11 exits 0 after
"lost communication with a remote daemon"), so the launcher judges the run by
these reports too.
With `--transport ssh` the worker also runs sshd (sshd.py) and refuses `exec`.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from enum import Enum

from .. import admission, contract, supervisor
from ..addresses import listen_any, unmapped
from ..group.wire import ProtocolError
from . import channel, command

log = logging.getLogger("jobset_runtime.mpi.worker")

VANISH_S = 5 * channel.HEARTBEAT_S

# jobset-run exports the *pod's* rank and world size (and torchrun's settings); MPI
# ranks started here get their own from MPI, so these would only mislead them.
_NOT_FOR_RANKS = frozenset({
    contract.RANK_ENV, contract.WORLD_SIZE_ENV, contract.TORCH_RANK, contract.TORCH_WORLD_SIZE,
    contract.TORCH_NODE_RANK, contract.TORCH_MASTER_ADDR, contract.TORCH_MASTER_PORT, contract.TORCHRUN_NNODES,
    contract.TORCHRUN_NODE_RANK, contract.TORCHRUN_MASTER_ADDR, contract.TORCHRUN_MASTER_PORT,
})


def daemon_base_env(environ) -> dict[str, str]:
    """The env an MPI daemon starts from: the pod's, less the per-pod numbering."""
    return {k: v for k, v in environ.items() if k not in _NOT_FOR_RANKS}


@dataclass(frozen=True)
class Outcome:
    code: int
    cause: str


class DaemonState(str, Enum):
    """What a `daemon` report on the watch channel says.

    started -> exited    the daemon ended by itself: `code` (0 when clean), `signal` when killed
    started -> stopped   the worker stopped it because its agent left (mpirun ended the agent)
    """
    STARTED = "started"
    EXITED = "exited"
    STOPPED = "stopped"


def own_pod_name(environ=os.environ) -> str:
    """This pod's name as jobset-run exports it; the hostname where it does not."""
    return environ.get(contract.IDENTITY_ENV["pod_name"]) or socket.gethostname()


class WorkerServer:
    """The listening side; `wait()` returns the Outcome that ends the worker."""

    def __init__(self, key: bytes, *, pod: str, address: str | None = None, port: int = contract.MPI_PORT,
                 allow_exec: bool = True, vanish_s: float = VANISH_S, pod_name: str | None = None, known=None,
                 limits: admission.Limits = admission.Limits()):
        self.key, self.pod, self.allow_exec, self.vanish_s = key, pod, allow_exec, vanish_s
        self.pod_name = pod_name or pod  # named in daemon reports (the pod, not only its hostname)
        # None: every address of both families (an IPv6 or dual-stack pod's launcher connects over IPv6).
        self._listener = (listen_any(port, backlog=1024) if address is None
                          else socket.create_server((address, port), backlog=1024,
                                                    family=socket.AF_INET6 if ":" in address else socket.AF_INET))
        self._done = threading.Event()
        self._outcome: Outcome | None = None
        self._lock = threading.Lock()
        self._daemons: set[subprocess.Popen] = set()
        self.watchers = 0  # launchers connected so far (benchmarks and tests read it)
        self._watch_channels: list[channel.Channel] = []
        self._watch_send = threading.Lock()  # frames are sequence-numbered: one sender at a time
        # Unauthenticated connections cost a thread each until the handshake ends (admission.py):
        # one deadline each, capped per source, dropped early when slots run short, known pods first.
        self.gate = admission.Gate(limits, known=known or (lambda addr: False))
        self.refusals = admission.RefusalLog("mpi worker", logger=log)
        self._pause = 0.0  # the last pause after accept() ran out of descriptors

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    def start(self) -> "WorkerServer":
        admission.raise_nofile_limit()
        self._listener.setblocking(False)
        _Acceptor.shared().add(self)
        return self

    def wait(self, timeout: float | None = None) -> Outcome | None:
        self._done.wait(timeout)
        return self._outcome

    def close(self) -> None:
        self._finish(Outcome(contract.EXIT_PEER_FAILED, "the worker was stopped"))
        self.refusals.flush_due(force=True)
        _Acceptor.shared().remove(self)  # before the close: the descriptor's number may come back
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            daemons = list(self._daemons)
        for proc in daemons:
            _kill_group(proc)

    def fail(self, cause: str, code: int = 1) -> None:
        """End the worker with a failure of its own (e.g. its sshd died)."""
        self._finish(Outcome(code, cause))

    # --- connections ---------------------------------------------------------
    def _finish(self, outcome: Outcome) -> None:
        with self._lock:
            if self._outcome is None:
                self._outcome = outcome
        self._done.set()

    def _accept_ready(self) -> float:
        """Accept one connection (the acceptor saw the listener readable); the pause the
        acceptor should take before accepting again (0 but when out of descriptors).
        The listener serves until close(), its verdict reached or not: a peer then still
        gets a handshake, and an answer, rather than a connection nobody takes."""
        try:
            sock, addr = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return 0.0
        except OSError as e:
            if admission.out_of_resources(e):
                # Out of descriptors: pause accepting (the backlog waits), never spin.
                self.refusals.note(None, f"accept() failed: {e.strerror}")
                self._pause = admission.accept_backoff(self._pause)
                return self._pause
            return 0.0  # the client gave up before accept (ECONNABORTED, ...), or we are closing
        self._pause = 0.0
        sock.setblocking(True)
        addr = (unmapped(addr[0]), *addr[1:])  # an IPv4 peer of the dual-stack listener, as DNS names it
        refusal = self.gate.admit(addr[0])
        if refusal is not None:
            self.refusals.note(addr[0], refusal)
            sock.close()
            return 0.0
        try:
            threading.Thread(target=self._serve, args=(sock, addr), daemon=True).start()
        except RuntimeError:  # no thread to be had: as full
            self.gate.release(addr[0])
            self.refusals.note(addr[0], "cannot start a thread")
            sock.close()
        return 0.0

    def _serve(self, sock: socket.socket, addr) -> None:
        try:
            try:
                chan, hello = channel.accept(sock, self.key, pod=self.pod, timeout=self.gate.limits.deadline)
            finally:
                self.gate.release(addr[0])
        except (channel.Probe, ConnectionResetError):
            sock.close()  # a port check (the launcher's wait, a readiness probe)
            return
        except (OSError, ProtocolError) as e:
            self.refusals.note(addr[0], "handshake timed out" if isinstance(e, socket.timeout) else "handshake failed")
            log.debug("refused a connection from %s: %s", addr[0], e)
            sock.close()
            return
        self.gate.learn(addr[0])
        try:
            if hello["role"] == "watch":
                self._watch(chan)
            else:
                self._exec(chan)
        except (OSError, ProtocolError) as e:
            log.warning("connection from %s (%s) ended: %s", chan.peer, addr[0], e)
            if hello["role"] == "watch":
                self._finish(Outcome(contract.EXIT_PEER_FAILED, f"lost the launcher {chan.peer}: {e}"))
        finally:
            chan.close()

    def on_sigterm(self, signum, _frame) -> None:
        """The SIGTERM handler: stopping() on a thread of its own.  The handler runs in the main
        thread between any two bytecodes, maybe inside `with self._lock` (close(), _finish()),
        and stopping() takes that lock, which is not re-entrant: called here, it would wait for ever."""
        threading.Thread(target=self.stopping, args=(f"received {signal.Signals(signum).name}",),
                         name="mpi-worker-stopping", daemon=True).start()

    def stopping(self, cause: str) -> None:
        """Tell the launcher this worker is being stopped (not lost), then end with EXIT_SIGNAL_BASE+15."""
        with self._lock:
            chans = list(self._watch_channels)
        self._send_watch(chans, {"t": "stopping", "cause": cause})
        self._finish(Outcome(contract.EXIT_SIGNAL_BASE + signal.SIGTERM, f"the worker was stopped ({cause})"))

    def _watch(self, chan: channel.Channel) -> None:
        with self._lock:
            self.watchers += 1
            self._watch_channels.append(chan)
        log.info("launcher %s connected", chan.peer)
        while True:
            try:
                msg = chan.recv(timeout=self.vanish_s)
            except socket.timeout:
                self._finish(Outcome(contract.EXIT_PEER_FAILED,
                                     f"the launcher {chan.peer} sent nothing for {self.vanish_s:g}s; it is gone"))
                return
            if msg is None:
                self._finish(Outcome(contract.EXIT_PEER_FAILED,
                                     f"the launcher {chan.peer} went away before saying how mpirun ended"))
                return
            if msg["t"] == "finish":
                code = msg["code"]
                if code == 0:
                    self._finish(Outcome(0, "the launcher's mpirun succeeded"))
                else:
                    self._finish(Outcome(contract.EXIT_PEER_FAILED,
                                         f"the launcher's mpirun failed (exit code {code}): {msg['cause'][:500]}"))
                return
            if msg["t"] != "hb":
                raise ProtocolError(f"the launcher may not send {msg['t']}")

    def _exec(self, chan: channel.Channel) -> None:
        msg = chan.recv(timeout=10)
        if msg is None:
            return
        if msg["t"] != "exec":
            raise ProtocolError(f"expected exec, got {msg['t']}")
        try:
            if not self.allow_exec:
                raise command.CommandError("this worker runs sshd; start daemons over ssh")
            cmd = command.RemoteCommand.from_wire(msg)
            command.check_allowed(cmd)
            cmd = command.confine(cmd, daemon_base_env(os.environ))
            env = command.environment(cmd, daemon_base_env(os.environ))
            proc = subprocess.Popen(list(cmd.argv), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except (command.CommandError, OSError) as e:
            log.warning("refused to start %s for %s: %s", (msg.get("argv") or ["?"])[0], chan.peer, e)
            chan.send({"t": "refused", "cause": str(e)[:500]})
            return
        name = os.path.basename(cmd.argv[0])
        with self._lock:
            self._daemons.add(proc)
        log.info("started %s (pid %d) for %s", name, proc.pid, chan.peer)
        self._report(proc, name, DaemonState.STARTED)
        ended: list[int] = []  # holds its exit code once the daemon's end is reported
        try:
            chan.send({"t": "started", "pid": proc.pid})
            self._pump(chan, proc, name, ended)
        finally:
            if proc.poll() is None:
                sent = _kill_group(proc)  # while still listed, so that close() waits for it too
                if proc.returncode is not None and -proc.returncode > 0 and -proc.returncode not in sent:
                    # Already dying of a signal not ours: a killed process's sockets close before it
                    # becomes a zombie, so mpirun, and then its agent, may end before it can be reaped.
                    self._ended(proc, name)
                else:
                    self._report(proc, name, DaemonState.STOPPED)
            elif not ended:  # it exited just as its agent left (or the agent's connection broke)
                self._ended(proc, name)
            with self._lock:
                self._daemons.discard(proc)

    def _pump(self, chan: channel.Channel, proc: subprocess.Popen, name: str, ended: list[int]) -> None:
        """Relay output until the daemon exits, then report how it ended; return at once if the agent leaves.

        The daemon's end is watched by pidfd, not by its pipes closing: ranks it
        leaves behind may hold the pipes open long after it died.
        """
        sel = selectors.DefaultSelector()
        pidfd = _exit_fd(proc)
        sel.register(proc.stdout, selectors.EVENT_READ, 1)
        sel.register(proc.stderr, selectors.EVENT_READ, 2)
        sel.register(chan.sock, selectors.EVENT_READ, _AGENT)
        sel.register(pidfd, selectors.EVENT_READ, _EXITED)
        try:
            while True:
                for key, _ in sel.select():
                    if key.data == _AGENT:  # the agent sends nothing after exec: readable means it left
                        log.info("agent %s left; stopping daemon pid %d", chan.peer, proc.pid)
                        return  # _exec stops the daemon and reports it
                    if key.data == _EXITED:
                        sel.unregister(chan.sock)
                        sel.unregister(pidfd)
                        ended.append(self._ended(proc, name))
                        self._drain(chan, sel)
                        chan.send({"t": "exit", "code": ended[0]})
                        return
                    if not self._relay(chan, key):
                        sel.unregister(key.fileobj)
        finally:
            sel.close()
            os.close(pidfd)

    def _ended(self, proc: subprocess.Popen, name: str) -> int:
        """Reap the daemon, log and report how it ended; its exit code."""
        name = _daemon_name(proc.pid, name)
        status = proc.wait()
        code = supervisor.exit_code_of(status)
        signum = -status if status < 0 else 0
        if status == 0:
            log.info("%s (pid %d) exited cleanly", name, proc.pid)
        else:
            log.error("%s", supervisor.describe_exit(f"{name} (pid {proc.pid})", code, with_code=not signum))
        # The launcher hears it before the agent does (and so before mpirun can end on it).
        self._report(proc, name, DaemonState.EXITED, code, signum)
        if status != 0:
            _kill_leftovers(proc.pid)  # its ranks have no daemon left to serve them
        return code

    def _drain(self, chan: channel.Channel, pipes: selectors.BaseSelector) -> None:
        """Relay what the daemon wrote last, without waiting on pipes its leftovers may hold."""
        deadline = time.monotonic() + DRAIN_S
        while pipes.get_map() and time.monotonic() < deadline:
            ready = pipes.select(0.05)
            if not ready:
                break
            for key, _ in ready:
                if not self._relay(chan, key):
                    pipes.unregister(key.fileobj)

    @staticmethod
    def _relay(chan: channel.Channel, key: selectors.SelectorKey) -> bool:
        """Send what one of the daemon's pipes holds; False at its end."""
        data = os.read(key.fileobj.fileno(), channel.OUT_CHUNK)
        if data:
            chan.send({"t": "out", "fd": key.data, "data": data.decode("utf-8", "replace")})
        return bool(data)

    def _send_watch(self, chans: list[channel.Channel], msg: dict) -> None:
        for chan in chans:
            try:
                with self._watch_send:
                    chan.send(msg)
            except OSError:
                pass  # that launcher is gone; its own channel's end says so

    def _report(self, proc: subprocess.Popen, name: str, state: DaemonState, code: int = 0, signum: int = 0) -> None:
        """Tell the launcher how one daemon stands, while its run is live (after `finish`, nobody asks)."""
        with self._lock:
            chans = list(self._watch_channels) if self._outcome is None else []
        self._send_watch(chans, {"t": "daemon", "pod": self.pod_name, "name": name, "pid": proc.pid,
                                 "state": state.value, "code": code, "signal": signum})


class _Acceptor:
    """One thread accepting for every WorkerServer of the process, over a selector.

    A worker pod runs one server, so this is its one accept thread, as before; a process
    standing for many workers (tests, bench/mpi_launcher_start.py: 12,736 worker addresses
    over a few processes) pays one thread for all their listeners instead of one each, and
    one wake-up a second to report refusals instead of one per listener."""

    _shared: "_Acceptor | None" = None
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls) -> "_Acceptor":
        with cls._shared_lock:
            if cls._shared is None or os.getpid() != cls._shared.pid:  # a forked child starts its own
                cls._shared = cls()
            return cls._shared

    def __init__(self):
        self.pid = os.getpid()
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._servers: dict[int, WorkerServer] = {}  # id() -> server, for the refusal reports
        threading.Thread(target=self._run, name="mpi-worker-accept", daemon=True).start()

    def add(self, server: WorkerServer) -> None:
        with self._lock:
            self._sel.register(server._listener, selectors.EVENT_READ, server)
            self._servers[id(server)] = server

    def remove(self, server: WorkerServer) -> None:
        with self._lock:
            if self._servers.pop(id(server), None) is not None:
                try:
                    self._sel.unregister(server._listener)
                except (KeyError, ValueError):
                    pass

    def _run(self) -> None:
        reported = time.monotonic()
        while True:
            try:
                ready = self._sel.select(1.0)  # at least once a second: report refusals
            except OSError:  # a listener closed while registered: its remove() is on its way
                time.sleep(0.01)
                continue
            pause = 0.0
            for key, _ in ready:
                try:
                    pause = max(pause, key.data._accept_ready())
                except Exception:  # one server's bug must not stop accepting for the others
                    log.exception("mpi worker: accepting a connection failed")
            if time.monotonic() - reported >= 1.0:  # once a second, not once per connection
                reported = time.monotonic()
                with self._lock:
                    servers = list(self._servers.values())
                for server in servers:
                    server.refusals.flush_due()
            if pause:
                time.sleep(pause)


_AGENT, _EXITED = 0, -1  # selector tags beside the pipes' fds 1 and 2
DRAIN_S = 1.0  # after a daemon exits, how long its last output may take to be relayed


def _exit_fd(proc: subprocess.Popen) -> int:
    """A descriptor that becomes readable when `proc` exits (it is not reaped)."""
    try:
        return os.pidfd_open(proc.pid)
    except OSError:  # before Linux 5.3, or a sandbox without pidfd_open: a thread and a pipe
        r, w = os.pipe()

        def wait():
            try:
                os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:
                pass
            os.close(w)

        threading.Thread(target=wait, daemon=True, name=f"mpi-daemon-{proc.pid}").start()
        return r


def _daemon_name(pid: int, started_as: str) -> str:
    """What the daemon is now: Intel's hydra_bstrap_proxy execs hydra_pmi_proxy in its place.
    Read before the zombie is reaped, while /proc still holds it."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
    except OSError:
        return started_as
    return comm if comm in command.DAEMONS and comm != started_as else started_as


def _kill_leftovers(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_group(proc: subprocess.Popen, grace: float = 2.0) -> list[int]:
    """SIGTERM the daemon's group, SIGKILL it `grace` s later; the signals sent."""
    sent: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return sent
        sent.append(sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return sent
            time.sleep(0.02)
    return sent
