"""`python -m jobset_runtime.mpi launcher`: wait for the workers, write the hostfile, run mpirun.

Steps, each fixing a mistake users report with today's operators (REFERENCE.md):
1. wait for every worker's DNS record, then its port (progress, one deadline)
   instead of crash-looping while records are late;
2. write the hostfile (by resolved IP by default) and point mpirun at it with
   the names the installed MPI really reads (PRTE_MCA_* for Open MPI 5);
3. connect a `watch` channel to every worker: a worker that goes away is named,
   and mpirun is stopped GRACE_S later if it has not noticed by itself;
4. run mpirun (run-as-root flag only for root; Python programs under
   `python -m mpi4py`, so an exception aborts the job instead of hanging it),
   relaying its stderr: once it announces the job's end (an MPI_Abort, ...),
   it has ENDING_EXIT_S to exit, or is stopped (announcements.py); once it is
   gone, the agents it left running are stopped too (orphans.py);
5. tell every worker how it ended (`finish`), so the workers exit too, and
   leave the cause in the termination message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .. import contract, supervisor
from ..addresses import join_host_port
from ..errors import ConfigError, PeersTimeout, first_few
from ..files import write_atomic
from ..group.wire import ProtocolError
from . import channel, hostfile, orphans
from .agent import port_from_env, script_text
from .announcements import StderrRelay
from .detect import detect, missing
from .tokens import load_key
from .worker import DaemonState

log = logging.getLogger("jobset_runtime.mpi.launcher")

GRACE_S = 2.0  # after a worker is lost (or a daemon there failed), mpirun gets this long to fail by itself
DAEMONS_SETTLE_S = 10.0  # after mpirun exited 0, how long every started daemon may take to report its end
LOSS_SETTLE_S = 1.0  # after mpirun failed on its own, how long a worker's loss may take to be reported
BEAT_WAIT_S = 0.5  # how long a heartbeat round waits for the channel openings under way to finish
ENDING_EXIT_S = 10.0  # after mpirun announced the job's end (announcements.py), how long it may take to exit
# After mpirun ended, how long its agents may take to end by themselves (a worker relays a daemon's
# last output for up to worker.DRAIN_S before it says the daemon exited) before they are stopped.
AGENTS_SETTLE_S = 2.0
TRANSPORTS = ("exec", "ssh")
HOSTFILE_BY = hostfile.HOSTFILE_BY
_PYTHON = re.compile(r"python[0-9.]*\Z")


@dataclass
class Options:
    program: list[str]
    mpirun_args: list[str] = field(default_factory=list)
    mpi: str = "auto"
    mpirun: str = "mpirun"
    transport: str = "exec"
    hostfile_by: str = "auto"  # hostfile.HOSTFILE_BY
    slots: int = 1
    workers_job: str = "worker"
    timeout: float = 600.0
    hostfile: str | None = None


# --- pure pieces -------------------------------------------------------------------

LAUNCHER_FORM = "launcher [options] -- PROGRAM ARGS, or launcher [options] -- MPIRUN-OPTIONS -- PROGRAM ARGS"


def split_command(rest: list[str], form: str = LAUNCHER_FORM) -> tuple[list[str], list[str]]:
    """`[-- mpirun options --] PROGRAM ARGS` -> (mpirun options, program).

    mpirun options always start with a dash, so `-- python t.py -- x` keeps
    its second `--` for the program.  A second `--` right after the first, or a
    program that starts with a dash (mpirun options without the `--` that ends
    them) is a ConfigError: it would run the options as the program, and a
    Python program no longer under `-m mpi4py`.
    """
    if rest[:1] == ["--"]:
        rest = rest[1:]
        if rest[:1] == ["--"]:
            raise ConfigError(f"`-- --`: a doubled separator before {first_few(rest[1:4], 3) or 'nothing'}; "
                              f"write {form} (one `--` on each side of mpirun's options)")
    options, program = [], rest
    if rest and rest[0].startswith("-") and "--" in rest:
        i = rest.index("--")
        options, program = rest[:i], rest[i + 1:]
    if program and program[0].startswith("-"):
        where = "after mpirun's options" if options else "where the program should be"
        raise ConfigError(f"{program[0]!r} {where} is an option, not a program; write {form}")
    return options, program


def program_argv(program: list[str], python: str = sys.executable) -> list[str]:
    """Run Python under `-m mpi4py`: an uncaught exception then aborts every rank instead of hanging them."""
    if not program:
        raise ConfigError("no program to run: python -m jobset_runtime.mpi launcher [options] -- PROGRAM ARGS")
    head = os.path.basename(program[0])
    if program[0].endswith(".py"):
        return [python, "-m", "mpi4py", *program]
    if _PYTHON.match(head):
        rest = program[1:]
        if rest[:2] == ["-m", "mpi4py"]:
            return list(program)
        return [program[0], "-m", "mpi4py", *rest]
    return list(program)


def require_mpi4py(argv: list[str], python: str = sys.executable) -> None:
    """A Python program runs under `-m mpi4py` (program_argv): where the Python that runs the
    ranks is this one (the launcher and workers share the image), mpi4py must be installed, or
    every rank would fail with "No module named mpi4py" after the workers were waited for."""
    if argv[1:3] != ["-m", "mpi4py"]:
        return
    found = shutil.which(argv[0])
    if found and os.path.realpath(found) == os.path.realpath(python):
        from ..extras import require

        require("mpi", f"running {argv[0]} -m mpi4py {' '.join(argv[3:4])}".rstrip())


def has_np(args: list[str]) -> bool:
    return any(a in ("-n", "-np", "--np", "-c") or a.startswith(("-n=", "--np=", "-np=")) for a in args)


def mpirun_argv(impl: hostfile.Implementation, opts: Options, *, uid: int, total: int,
                launcher_address: str | None, launcher_interface: str | None = None,
                family_flags: tuple[str, ...] = ()) -> list[str]:
    argv = [opts.mpirun, *hostfile.root_flags(impl, uid), *hostfile.attach_flags(impl),
            *hostfile.launcher_host_flags(impl, launcher_address, launcher_interface), *family_flags]
    if not has_np(opts.mpirun_args):
        argv += ["-n", str(total)]
    return argv + list(opts.mpirun_args) + program_argv(opts.program)


def daemon_failed(report: dict) -> bool:
    """A daemon that ended by itself, but not cleanly: killed by a signal, or a non-zero exit."""
    return report["state"] == DaemonState.EXITED and bool(report["code"] or report["signal"])


def describe_daemon(report: dict, host: str) -> str:
    """`MPI daemon prted (pid 12) in worker pod pi-worker-0-1-x7k2p was killed by SIGKILL`."""
    what = f"MPI daemon {report['name']} (pid {report['pid']}) in worker pod {report['pod'][:100]}"
    if report["pod"] != host:
        what += f" ({host})"
    if report["state"] == DaemonState.STARTED:
        return f"{what} never reported its end"
    if report["state"] == DaemonState.STOPPED:
        return f"{what} was still running when mpirun's agent for it ended, and was stopped"
    if report["signal"]:
        try:
            name = signal.Signals(report["signal"]).name
        except ValueError:
            name = f"signal {report['signal']}"
        return f"{what} was killed by {name}"
    return f"{what} exited with code {report['code']}"


def unclean_ends(reports: list[tuple[str, dict]], expected: list[str]) -> list[str]:
    """Why a run whose mpirun exited 0 is still not a success; [] when it is one.

    The program ended cleanly on every rank only if every daemon a worker started
    for it exited by itself with code 0 (a daemon leaves cleanly only when its ranks
    have), and each worker in `expected` (those the launcher placed ranks on)
    started at least one.
    """
    problems = [describe_daemon(m, host) for host, m in reports
                if m["state"] != DaemonState.EXITED or daemon_failed(m)]
    started = {host for host, _ in reports}
    missing = [h for h in expected if h not in started]
    if missing:
        problems.append(f"no MPI daemon was started on worker {first_few(missing)}, where ranks were placed")
    return problems


def expected_daemon_hosts(hosts: list[str], opts: Options) -> list[str]:
    """The workers that must run a daemon: every one when the launcher alone chose -n and
    the mapping (-n = workers x slots fills each); none when mpirun options of the user's
    may place ranks elsewhere (then only the daemons that did start are judged)."""
    return [] if opts.mpirun_args or opts.transport != "exec" else list(hosts)


DESCRIPTORS_BESIDE_CHANNELS = 128  # the channels still opening, the port wait's window, files, DNS


def check_descriptors(workers: int, soft: int, hard: int) -> None:
    """A ConfigError now, rather than channels that cannot open until the timeout, when this
    pod may not hold a watch channel to every worker at once."""
    need = workers + DESCRIPTORS_BESIDE_CHANNELS
    if soft < need:
        raise ConfigError(
            f"{workers} MPI workers need about {need} open files in the launcher (a watch channel to each), "
            f"and this pod may open {soft} (hard limit {hard}): raise the container's nofile limit (the "
            "container runtime's default_ulimits, or LimitNOFILE of containerd's service) to at least "
            f"{need}, or use fewer, larger workers")


def worker_hosts(identity, workers_job: str) -> list[str]:
    topo = identity.topology
    if topo is None:
        identity.all_hosts()  # raises the ConfigError that says to set the topology
    try:
        shape = topo.shape(workers_job)
    except KeyError:
        raise ConfigError(
            f"{contract.TOPOLOGY_ENV}={topo} has no replicated job {workers_job!r}; pass --workers-job NAME"
        ) from None
    return [f"{identity.jobset_name}-{shape.name}-{j}-{p}" for j in range(shape.replicas) for p in range(shape.pods)]


# --- the run -------------------------------------------------------------------------

class Watch:
    """The launcher's side of every worker's `watch` channel: heartbeats out, losses in."""

    def __init__(self, channels: dict[str, channel.Channel] | None = None):
        self.channels: dict[str, channel.Channel] = {}
        self._pending: list[str] = []  # added, not yet watched for reads
        self.lost: dict[str, float] = {}  # host -> monotonic time it went away or was stopped
        self.stopped: dict[str, str] = {}  # host -> why, for workers that said they were stopped
        self.daemons: dict[tuple[str, int], dict] = {}  # (host, pid) -> the latest `daemon` report
        self.daemon_failed: dict[str, float] = {}  # host -> monotonic time a daemon there ended abnormally
        self._reported = threading.Event()  # a daemon report arrived (wait_for_daemons)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        # Frames are sequence-numbered, so one sender at a time; not under _lock, which the
        # listener and the main thread need while a send waits on a worker that stopped reading.
        self._send_lock = threading.Lock()
        self._changed = threading.Event()
        # Heartbeat rounds and channel openings take turns (handshake(), _beat).
        self._turns = threading.Condition()
        self._handshakes = 0
        self._beating = False
        self._vanished = threading.Event()  # a worker was lost (wait_for_lost)
        for host, chan in (channels or {}).items():
            self.add(host, chan)

    def add(self, host: str, chan: channel.Channel) -> None:
        """Watch one more worker; heartbeats start at once, so early workers never wait for the last."""
        with self._lock:
            self.channels[host] = chan
            self._pending.append(host)

    @contextlib.contextmanager
    def handshake(self):
        """Around the opening of one channel: none starts while a heartbeat round runs.

        A round is one send per worker, and each send gives up the interpreter lock; with
        the handshakes' threads busy hashing, every send waits a switch interval (5 ms) to
        get it back, so 12,736 sends took a minute, and the workers that had joined first
        heard nothing for their VANISH_S and left (bench/mpi_launcher_start.py).  So a
        round waits for the handshakes under way (at most BEAT_WAIT_S), and runs alone."""
        with self._turns:
            while self._beating:
                self._turns.wait()
            self._handshakes += 1
        try:
            yield
        finally:
            with self._turns:
                self._handshakes -= 1
                self._turns.notify_all()

    def start(self) -> "Watch":
        threading.Thread(target=self._beat, daemon=True, name="mpi-watch-beat").start()
        threading.Thread(target=self._listen, daemon=True, name="mpi-watch-listen").start()
        return self

    def _lose(self, host: str, cause: str | None = None) -> None:
        """Record a worker's end: `cause` when it said why (it was stopped), None when it just vanished."""
        if self._stop.is_set():
            return  # closing after finish is expected
        with self._lock:
            if host not in self.lost:
                self.lost[host] = time.monotonic()
                if cause:
                    self.stopped[host] = cause
                log.error("worker %s %s", host, f"was stopped ({cause})" if cause else "went away")
                self._changed.set()
                self._vanished.set()

    def _daemon(self, host: str, msg: dict) -> None:
        """Record a worker's report on one of its daemons; an abnormal end fails the run like a lost worker."""
        if self._stop.is_set():
            return
        with self._lock:
            self.daemons[(host, msg["pid"])] = {**msg, "at": time.monotonic()}
            if daemon_failed(msg) and host not in self.daemon_failed:
                self.daemon_failed[host] = time.monotonic()
                log.error("%s", describe_daemon(msg, host))
                self._changed.set()
        self._reported.set()

    def troubles(self) -> dict[str, float]:
        """Workers lost or with a daemon ended abnormally -> when it was first seen."""
        with self._lock:
            merged = dict(self.daemon_failed)
            for host, at in self.lost.items():
                merged[host] = min(at, merged.get(host, at))
        return merged

    def reports(self) -> list[tuple[str, dict]]:
        with self._lock:
            return [(host, msg) for (host, _), msg in self.daemons.items()]

    def wait_for_daemons(self, timeout: float) -> None:
        """Until every daemon reported started has reported its end, or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while True:
            self._reported.clear()
            if all(m["state"] != DaemonState.STARTED for _, m in self.reports()):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._reported.wait(min(left, 0.2))

    def _send_all(self, msg: dict) -> list[str]:
        """Send `msg` to every worker not lost; returns those it could not reach."""
        with self._lock:
            snapshot = list(self.channels.items())
        failed = []
        for host, chan in snapshot:
            if host in self.lost:
                continue
            try:
                with self._send_lock:
                    chan.send(msg)
            except OSError:
                failed.append(host)
        return failed

    def _beat(self) -> None:
        while not self._stop.wait(channel.HEARTBEAT_S):
            self.beat_once()

    def beat_once(self) -> None:
        """One heartbeat round: a frame to every worker not lost, the handshakes under way let
        finish first (at most BEAT_WAIT_S) and none started until it is done."""
        with self._turns:
            self._beating = True
            self._turns.wait_for(lambda: self._handshakes == 0, timeout=BEAT_WAIT_S)
        try:
            failed = self._send_all({"t": "hb"})
        finally:
            with self._turns:
                self._beating = False
                self._turns.notify_all()
        for host in failed:
            self._lose(host)

    def _listen(self) -> None:
        import selectors

        sel = selectors.DefaultSelector()
        while not self._stop.is_set():
            with self._lock:
                pending, self._pending = self._pending, []
            for host in pending:
                sel.register(self.channels[host].sock, selectors.EVENT_READ, host)
            for key, _ in sel.select(0.2):
                # A worker sends on its watch channel to report its daemons, and to say
                # it is being stopped (SIGTERM); a close or anything else is a loss.
                cause = None
                try:
                    chan = self.channels[key.data]
                    msg = chan.recv(timeout=1.0)  # a whole frame is on its way: bounded, not forever
                    chan.sock.settimeout(None)  # heartbeats are sent on this socket too
                    if msg is not None and msg["t"] == "daemon":
                        self._daemon(key.data, msg)
                        continue
                    if msg is not None and msg["t"] == "stopping":
                        cause = msg["cause"][:200]
                except (OSError, ProtocolError):
                    pass
                sel.unregister(key.fileobj)
                self._lose(key.data, cause)
        sel.close()

    def wait_for_lost(self, timeout: float) -> bool:
        """Until a worker is lost (True) or `timeout` passes; a daemon's failure does not count."""
        return self._vanished.wait(timeout)

    def wait_for_loss(self, timeout: float) -> bool:
        """Until a worker is lost (True) or `timeout` passes."""
        return self._changed.wait(timeout)

    def finish(self, code: int, cause: str) -> None:
        self._stop.set()
        self._send_all({"t": "finish", "code": code, "cause": cause[:1000]})
        with self._lock:
            snapshot = list(self.channels.values())
        for chan in snapshot:
            chan.close()


def connect_all(addresses: dict[str, str], port: int, key: bytes, me: str, timeout: float,
                watch: "Watch") -> None:
    """One authenticated watch channel per worker, opened concurrently, each handed to `watch` at once."""
    deadline = time.monotonic() + timeout

    def one(item):
        host, ip = item
        try:
            # Turned away before the worker proved the token (its handshake slots taken by a
            # flood, a restart): again with backoff until the deadline, never a configuration error.
            with watch.handshake():
                chan = channel.connect_until(ip, port, key, role="watch", pod=me, deadline=deadline)
            watch.add(host, chan)
        except (channel.NotAdmitted, OSError) as e:
            raise PeersTimeout(f"cannot open the MPI channel to worker {host} ({join_host_port(ip, port)}) "
                               f"within {timeout:g} s: {e}") from None
        except ProtocolError as e:  # it answered, and could not prove the token
            raise ConfigError(f"worker {host} ({join_host_port(ip, port)}) rejected the launcher: {e}") from None

    with ThreadPoolExecutor(max_workers=min(64, max(1, len(addresses)))) as pool:
        list(pool.map(one, addresses.items()))


def ipv4_addresses(impl: hostfile.Implementation, names: dict[str, str], nameservers=None) -> dict[str, str]:
    """host -> IPv4 address of its DNS name, for an MPI that speaks IPv4 only (hostfile.naming) on
    pods whose own family is IPv6: present where the pods are dual-stack and their Service too.
    One query per name (the names already answered in the pods' family); ConfigError for any
    without one, which no restart adds."""
    from ..errors import DnsUnavailable
    from ..peers import resolve_batch

    result = resolve_batch(list(names.values()), nameservers, family="ipv4")
    if not result.replies and result.failed:
        raise DnsUnavailable(f"no DNS server answered for the IPv4 addresses {impl} needs "
                             f"({first_few(names.values(), 3)})")
    missing = [h for h, name in names.items() if name not in result.resolved]
    if missing:
        raise hostfile.ipv4_only_error(impl, missing)
    return {h: result.resolved[name] for h, name in names.items()}


def local_address(peer_ip: str) -> str:
    """The address this host uses to reach `peer_ip` (no packet is sent)."""
    with socket.socket(socket.AF_INET6 if ":" in peer_ip else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((peer_ip, 9))
        return s.getsockname()[0]


def interface_of(address: str) -> str | None:
    """The interface holding `address`: an IPv4 interface's address (SIOCGIFADDR), or an
    IPv6 one from /proc/net/if_inet6; None if no interface holds it."""
    import fcntl
    import ipaddress
    import struct

    ip = ipaddress.ip_address(address)
    if ip.version == 6:
        try:
            with open("/proc/net/if_inet6") as f:
                for line in f:  # address (32 hex digits), index, prefix, scope, flags, name
                    fields = line.split()
                    if len(fields) == 6 and ipaddress.IPv6Address(int(fields[0], 16)) == ip:
                        return fields[5]
        except OSError:
            pass
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
            except OSError:  # no IPv4 address
                continue
            if socket.inet_ntoa(raw[20:24]) == address:
                return name
    return None


def intel_interface(address: str, mpirun_args: list[str]) -> str | None:
    """The interface Intel's mpiexec should name to its proxies; None when the user gave -iface."""
    if any(a in ("-iface", "--iface") or a.startswith(("-iface=", "--iface=")) for a in mpirun_args):
        return None
    name = interface_of(address)
    if name is None:
        raise ConfigError(f"no network interface holds this pod's address {address}, which Intel MPI's "
                          "proxies must connect back to: pass `-iface NAME` in the mpirun options "
                          "(launcher ... -- -iface NAME -- PROGRAM)")
    return name


def run(opts: Options, identity, *, nameservers=None, marks: dict | None = None) -> int:
    """The whole launcher; returns the exit code.  `marks` receives timestamps (benchmarks)."""
    marks = marks if marks is not None else {}
    marks["start"] = time.monotonic()
    from ..admission import raise_nofile_limit
    from ..peers import family_of, wait_for_hosts

    # One watch channel per worker: 12,736 descriptors at the record scale, past a container's
    # usual soft limit of 1,024 (docs/mpi.md, At the record scale).
    soft, hard = raise_nofile_limit()

    if opts.transport not in TRANSPORTS:
        raise ConfigError(f"--transport {opts.transport}: use one of {', '.join(TRANSPORTS)}")
    require_mpi4py(program_argv(opts.program))
    hosts = worker_hosts(identity, opts.workers_job)
    check_descriptors(len(hosts), soft, hard)
    fqdns = {h: identity.fqdn(h) for h in hosts}
    chan_port = port_from_env()
    key = load_key()
    # By absolute path: Open MPI then acts as if given --prefix and tells each remote
    # daemon where it lives (OPAL_PREFIX/PRTE_PREFIX, PATH, LD_LIBRARY_PATH), which a
    # relocatable install (the PyPI wheels, a venv) needs; launcher and workers share
    # the image, so the path is the same there.
    mpirun = shutil.which(opts.mpirun)
    if mpirun is None:
        raise missing(opts.mpirun)
    opts = dataclasses.replace(opts, mpirun=os.path.abspath(mpirun))
    impl = detect(opts.mpirun, family=opts.mpi)
    log.info("MPI: %s; waiting for %d workers (%s)", impl, len(hosts), first_few(hosts))
    port = contract.SSH_PORT if opts.transport == "ssh" else chan_port
    by_fqdn = wait_for_hosts(list(fqdns.values()), port=port, timeout=opts.timeout, nameservers=nameservers,
                             family=family_of(identity.pod_ip))
    addresses = {h: by_fqdn[fqdns[h]] for h in hosts}
    # What mpirun is given (the hostfile by IP, the launcher's own address): the same answers,
    # unless the MPI cannot speak the pods' family (IPv6) and needs their IPv4 addresses.
    plan = hostfile.naming(impl, opts.hostfile_by, any(":" in ip for ip in addresses.values()), opts.mpirun_args)
    mpi_addresses = addresses
    if plan.ipv4:
        mpi_addresses = ipv4_addresses(impl, {**fqdns, identity.hostname: identity.fqdn()}, nameservers)
        log.info("%s speaks IPv4 only: the hostfile and mpirun get the pods' IPv4 addresses", impl)
    marks["peers"] = time.monotonic()
    remaining = max(1.0, opts.timeout - (marks["peers"] - marks["start"]))
    watch = Watch().start()
    try:
        connect_all(addresses, chan_port, key, identity.hostname, remaining, watch)
    except BaseException:
        watch.finish(contract.EXIT_PEERS_TIMEOUT, "the launcher could not reach every worker")
        raise
    marks["channels"] = time.monotonic()

    workdir = tempfile.mkdtemp(prefix="jobset-runtime-mpi-")
    try:
        path = opts.hostfile or os.path.join(workdir, "hostfile")
        by_ip = plan.by == "ip"
        names = [mpi_addresses[h] if by_ip else fqdns[h] for h in hosts]
        # Intel's IPv6 lines hold the address alone; the slots go in I_MPI_PERHOST (hostfile.render).
        write_atomic(path, hostfile.render(hostfile.entries(names, 1 if plan.per_host else opts.slots), impl.family))
        env = dict(os.environ)
        agent = agent_args = None
        if opts.transport == "exec":
            agent = os.path.join(workdir, "agent")
            with open(agent, "w") as f:
                f.write(script_text(sys.executable))
            os.chmod(agent, 0o700)
        else:
            from .sshd import client_setup

            agent, agent_args = client_setup(workdir)
        env.update(hostfile.settings(impl, path, agent=agent, agent_args=agent_args, keep_fqdn=not by_ip,
                                     per_host=opts.slots if plan.per_host else None))
        my_ip = local_address(next(iter(mpi_addresses.values())))
        argv = mpirun_argv(impl, opts, uid=os.getuid(), total=len(hosts) * opts.slots,
                           launcher_address=my_ip if by_ip else identity.fqdn(),
                           launcher_interface=(intel_interface(my_ip, opts.mpirun_args)
                                               if impl.family == hostfile.INTEL else None),
                           family_flags=plan.flags)
        log.info("running %s", " ".join(argv))
        marks["exec"] = time.monotonic()
        previous = {sig: signal.getsignal(sig) for sig in supervisor.FORWARDED}
        code, cause = _supervise(argv, env, watch, expected_daemon_hosts(hosts, opts))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    # A stop request now (the JobSet failing because of the very worker we lost) must not
    # cut the cause short: it is written first, and the default handlers come back after.
    if code:
        log.error("%s", cause)
        supervisor.write_termination_message(cause)
    watch.finish(code, cause)
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    return code


def _stop_noted(signum, _frame) -> None:
    log.info("received %s after mpirun ended; finishing", signal.Signals(signum).name)
    supervisor.stop_requested.set()


def _supervise(argv: list[str], env: dict, watch: Watch, expected: list[str]) -> tuple[int, str]:
    # mpirun's agents outlive a stopped mpirun (orphans.py): they become this process's children.
    adopted = orphans.adopt()
    before = orphans.children()
    try:
        child = supervisor.launch(argv, env, stderr=subprocess.PIPE)
    except FileNotFoundError:
        if adopted:
            orphans.adopt(False)
        raise missing(argv[0]) from None
    relay = StderrRelay(child.proc.stderr).start()
    stopped_for = None
    hung = False  # mpirun announced the job's end and had not exited ENDING_EXIT_S later
    while child.proc.poll() is None:
        ended_at = relay.ended_at
        if not hung and stopped_for is None and ended_at is not None \
                and time.monotonic() - ended_at >= ENDING_EXIT_S:
            hung = True
            log.error("mpirun announced the job's end (%s) %g s ago and has not exited; stopping it",
                      relay.ending, ENDING_EXIT_S)
            child.stop(grace=1.0)
            continue
        troubles = watch.troubles()
        if not troubles:
            watch.wait_for_loss(0.1)
            continue
        if stopped_for is None and time.monotonic() - min(troubles.values()) >= GRACE_S:
            stopped_for = sorted(troubles, key=troubles.get)
            log.error("mpirun did not notice the failure on %s; stopping it", first_few(stopped_for))
            child.stop(grace=1.0)
        time.sleep(0.05)  # the loss is known: wait for mpirun, or for the grace to pass
    code = supervisor.exit_code_of(child.proc.wait())
    relay.join(0.5)  # mpirun's last words before the launcher's (its agents may hold the pipe longer)
    if code and not watch.lost:
        # Hydra sees a killed worker's proxy go within milliseconds and exits at once, maybe
        # before that worker's watch channel is read, and maybe after another worker reported
        # its daemon failing because of it: give the loss a moment to arrive, so that the
        # message names the worker rather than only mpirun or a daemon.
        watch.wait_for_lost(LOSS_SETTLE_S)
    unclean: list[str] = []
    if code == 0 and not watch.troubles():
        # mpirun's 0 is not enough (PRRTE 5.0.11 exits 0 after losing a daemon): every
        # daemon must have ended cleanly, and each worker given ranks must have run one.
        watch.wait_for_daemons(DAEMONS_SETTLE_S)
        unclean = unclean_ends(watch.reports(), expected)
    if child.group_alive():
        child.stop(grace=1.0)
    left = orphans.children() - before - {child.pid}
    if left:
        # Its agents, each in a group of its own: those that do not end by themselves are stopped,
        # and each closes its channel, so its worker stops the daemon rather than both waiting for
        # the worker's end.
        stopped = orphans.stop(left, settle=AGENTS_SETTLE_S)
        if stopped:
            log.info("stopped %d process(es) mpirun left running (its agents): pid %s",
                     len(stopped), first_few([str(p) for p in stopped]))
    if adopted:
        orphans.adopt(False)
    for sig in supervisor.FORWARDED:  # mpirun is gone: note a stop request, finish the account first
        signal.signal(sig, _stop_noted)
    troubles = watch.troubles()
    if hung and not troubles:
        # The job failed (what mpirun announced); the launcher's own code says it had to be stopped.
        return contract.EXIT_RUN_FAILED, (f"mpirun announced the job's end ({relay.ending}) and had not exited "
                                          f"{ENDING_EXIT_S:g} s later, so it was stopped; the program's output "
                                          "above says why the job ended")
    if code == 0 and not troubles and not unclean:
        return 0, "mpirun succeeded"
    if unclean and not troubles:
        # No pod failed: the launcher's own exit code must carry the failure (a worker told
        # by `finish` exits 75, which the manifest's podFailurePolicy ignores).
        return contract.EXIT_RUN_FAILED, (f"mpirun exited 0, but the program did not end cleanly on every rank: "
                                          f"{first_few(unclean, 3)}; the run is not a success")
    if troubles:
        # Workers leave only when told to, and their daemons only when mpirun is done, so
        # either is a failure even when mpirun says 0: PRRTE 5.0.11 exits 0 after "lost
        # communication with a remote daemon".
        how = "mpirun was stopped" if stopped_for or hung else supervisor.describe_exit("mpirun", code)
        lost = sorted(watch.lost, key=watch.lost.get)
        # The cause is a worker that vanished (killed, OOM) or whose daemon died, rather
        # than one stopped by SIGTERM: once the JobSet fails, the controller stops all the others.
        failed = [describe_daemon(m, host) for host, m in sorted(watch.reports(), key=lambda r: r[1]["at"])
                  if daemon_failed(m)]
        first_failed = min((m["at"] for _, m in watch.reports() if daemon_failed(m)), default=None)
        vanished = [h for h in lost if h not in watch.stopped]
        stopped = [h for h in lost if h in watch.stopped]
        if stopped_for or hung or code in (0, contract.EXIT_PEER_FAILED):
            # A lost pod fails by itself, so 75 (stopped because of another) is right here; a
            # daemon that died inside a pod that lives on fails nothing unless the launcher does.
            code = contract.EXIT_RUN_FAILED if failed else contract.EXIT_PEER_FAILED
        parts = []
        if failed:
            then = f" (then {first_few(failed[1:], 3)})" if failed[1:] else ""
            parts.append(f"{failed[0]} while the run was live{then}")
        if vanished:
            went = (f"MPI worker {first_few(vanished)} went away without being stopped "
                    "(pod killed, OOM or evicted?)")
            # First what happened first: a lost pod's neighbours' daemons may fail because of it.
            parts.insert(0 if first_failed is None or watch.lost[vanished[0]] <= first_failed else 1, went)
        if stopped:
            parts.append(f"worker {first_few(stopped)} {'was' if len(stopped) == 1 else 'were'} stopped "
                         f"({watch.stopped[stopped[0]]})")
        culprit = "that worker's pod" if failed or vanished else "why the pods were stopped"
        return code, f"{'; '.join(parts)}; {how}; look at {culprit} first"
    return code, supervisor.describe_exit("mpirun", code)
