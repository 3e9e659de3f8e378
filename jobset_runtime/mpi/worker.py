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

from .. import admission, contract, supervisor
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


class WorkerServer:
    """The listening side; `wait()` returns the Outcome that ends the worker."""

    def __init__(self, key: bytes, *, pod: str, address: str = "0.0.0.0", port: int = contract.MPI_PORT,
                 allow_exec: bool = True, vanish_s: float = VANISH_S, known=None,
                 limits: admission.Limits = admission.Limits()):
        self.key, self.pod, self.allow_exec, self.vanish_s = key, pod, allow_exec, vanish_s
        self._listener = socket.create_server((address, port), reuse_port=False, backlog=1024)
        self._done = threading.Event()
        self._outcome: Outcome | None = None
        self._lock = threading.Lock()
        self._daemons: set[subprocess.Popen] = set()
        self.watchers = 0  # launchers connected so far (benchmarks and tests read it)
        self._watch_channels: list[channel.Channel] = []
        # Unauthenticated connections cost a thread each until the handshake ends (admission.py):
        # one deadline each, capped per source, dropped early when slots run short, known pods first.
        self.gate = admission.Gate(limits, known=known or (lambda addr: False))
        self.refusals = admission.RefusalLog("mpi worker", logger=log)

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    def start(self) -> "WorkerServer":
        admission.raise_nofile_limit()
        threading.Thread(target=self._accept_loop, name="mpi-worker-accept", daemon=True).start()
        return self

    def wait(self, timeout: float | None = None) -> Outcome | None:
        self._done.wait(timeout)
        return self._outcome

    def close(self) -> None:
        self._finish(Outcome(contract.EXIT_PEER_FAILED, "the worker was stopped"))
        self.refusals.flush_due(force=True)
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

    def _accept_loop(self) -> None:
        pause = 0.0
        self._listener.settimeout(1.0)  # wake up to report refusals
        while not self._done.is_set():
            self.refusals.flush_due()
            try:
                sock, addr = self._listener.accept()
            except socket.timeout:
                continue
            except OSError as e:
                if self._done.is_set() or self._listener.fileno() == -1:
                    return
                if admission.out_of_resources(e):
                    # Out of descriptors: pause accepting (the backlog waits), never spin.
                    self.refusals.note(None, f"accept() failed: {e.strerror}")
                    pause = admission.accept_backoff(pause)
                    time.sleep(pause)
                continue  # else the client gave up before accept (ECONNABORTED, ...)
            pause = 0.0
            refusal = self.gate.admit(addr[0])
            if refusal is not None:
                self.refusals.note(addr[0], refusal)
                sock.close()
                continue
            try:
                threading.Thread(target=self._serve, args=(sock, addr), daemon=True).start()
            except RuntimeError:  # no thread to be had: as full
                self.gate.release(addr[0])
                self.refusals.note(addr[0], "cannot start a thread")
                sock.close()

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

    def stopping(self, cause: str) -> None:
        """Tell the launcher this worker is being stopped (not lost), then end with EXIT_SIGNAL_BASE+15."""
        with self._lock:
            chans = list(self._watch_channels)
        for chan in chans:
            try:
                chan.send({"t": "stopping", "cause": cause})
            except OSError:
                pass
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
        with self._lock:
            self._daemons.add(proc)
        log.info("started %s (pid %d) for %s", os.path.basename(cmd.argv[0]), proc.pid, chan.peer)
        try:
            chan.send({"t": "started", "pid": proc.pid})
            self._pump(chan, proc)
        finally:
            with self._lock:
                self._daemons.discard(proc)
            if proc.poll() is None:
                _kill_group(proc)

    def _pump(self, chan: channel.Channel, proc: subprocess.Popen) -> None:
        """Relay output until the daemon exits; if the agent goes away first, stop the daemon."""
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ, 1)
        sel.register(proc.stderr, selectors.EVENT_READ, 2)
        sel.register(chan.sock, selectors.EVENT_READ, 0)
        open_pipes = 2
        try:
            while open_pipes:
                for key, _ in sel.select():
                    if key.data == 0:  # the agent sends nothing after exec: readable means it left
                        log.info("agent %s left; stopping daemon pid %d", chan.peer, proc.pid)
                        _kill_group(proc)
                        return
                    data = os.read(key.fileobj.fileno(), channel.OUT_CHUNK)
                    if not data:
                        sel.unregister(key.fileobj)
                        open_pipes -= 1
                        continue
                    chan.send({"t": "out", "fd": key.data, "data": data.decode("utf-8", "replace")})
            code = proc.wait()
            chan.send({"t": "exit", "code": supervisor.exit_code_of(code)})
        finally:
            sel.close()


def _kill_group(proc: subprocess.Popen, grace: float = 2.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return
            time.sleep(0.02)
