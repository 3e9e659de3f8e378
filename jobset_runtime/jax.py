"""`jax.distributed` on JobSet: one call in training code, every value explicit.

    import jobset_runtime.jax
    jobset_runtime.jax.initialize()          # before any other JAX call

The pure part (`plan`, `distributed_args`, `wrapper_env`, ...) turns an
Identity into the arguments of `jax.distributed.initialize`, the libtpu env
and the CPU config; `initialize` is the I/O edge:

1. set libtpu's env (TPU) and the CPU collectives config before the backend starts;
2. wait, under a deadline of our own, until the coordinator's name resolves
   and (other processes) its port accepts TCP;
3. call `jax.distributed.initialize(...)` with every argument given and
   `cluster_detection_method='deactivate'`, while a watchdog thread stands
   ready: JAX aborts the process (SIGABRT, no Python exception) once its
   initialization_timeout passes (REFERENCE.md: JAX), so at our deadline,
   which comes first, the watchdog names the hosts that are missing from DNS,
   writes the termination message and exits 69 (PeersTimeout) instead.

`import jax` happens inside functions only: `jobset-run` imports this module.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from . import contract
from .addresses import family_of, join_host_port
from .errors import ConfigError, JobSetRuntimeError, PeersTimeout, first_few
from .identity import Identity, hostname_of

log = logging.getLogger("jobset_runtime.jax")

__all__ = [
    "PLATFORMS",
    "DistributedArgs",
    "Plan",
    "coordinator_host",
    "cpu_config",
    "detect_platform",
    "distributed_args",
    "initialize",
    "plan",
    "process_numbering",
    "supported_kwargs",
    "wrapper_env",
]

PLATFORMS = ("cpu", "gpu", "tpu")

# JAX's own defaults (jax/_src/distributed.py), kept: see docs/jax.md for why.
DEFAULT_INITIALIZATION_TIMEOUT = 300
DEFAULT_HEARTBEAT_TIMEOUT = 100
DEFAULT_SHUTDOWN_TIMEOUT = 300
# Our deadline is this share of JAX's initialization_timeout unless given.
DEFAULT_DEADLINE_SHARE = 0.9
# The look at DNS made at our deadline, to name what is missing, takes at most this long
# (and at most half the time left before JAX's abort).
DIAGNOSE_BUDGET_S = 10.0


@dataclass(frozen=True)
class DistributedArgs:
    """The keyword arguments of `jax.distributed.initialize`, all of them explicit."""

    coordinator_address: str  # host:port of process 0's pod
    num_processes: int
    process_id: int
    local_device_ids: tuple[int, ...] | None
    initialization_timeout: int = DEFAULT_INITIALIZATION_TIMEOUT
    heartbeat_timeout_seconds: int = DEFAULT_HEARTBEAT_TIMEOUT
    shutdown_timeout_seconds: int = DEFAULT_SHUTDOWN_TIMEOUT
    cluster_detection_method: str = "deactivate"

    def kwargs(self) -> dict:
        kw = {k: getattr(self, k) for k in self.__dataclass_fields__}
        kw["local_device_ids"] = list(self.local_device_ids) if self.local_device_ids is not None else None
        return kw


@dataclass(frozen=True)
class Plan:
    """Everything `initialize` will do, computed before any I/O."""

    platform: str
    args: DistributedArgs
    coordinator_fqdn: str
    port: int
    is_coordinator: bool  # this process starts the coordination service (process 0)
    timeout: float  # our deadline, seconds from the start of `initialize`
    env: dict = field(default_factory=dict)  # set before the backend starts, never overriding
    config: dict = field(default_factory=dict)  # jax.config updates
    watch_hosts: tuple[str, ...] = ()  # FQDNs looked up at our deadline to name the missing ones
    family: str = "auto"  # the pod's address family: which DNS records to ask for


# --- pure: identity -> arguments ------------------------------------------------------

def detect_platform(environ: Mapping[str, str], exists: Callable[[str], bool] = os.path.exists) -> str:
    """cpu, gpu or tpu without starting a JAX backend (that must wait for `jax.distributed`)."""
    chosen = environ.get("JAX_PLATFORMS", "").split(",")[0].strip().lower()
    if chosen in ("cuda", "rocm", "gpu"):
        return "gpu"
    if chosen in PLATFORMS:
        return chosen
    if any(k in environ for k in contract.TPU_PRESENCE_ENV) or exists("/dev/accel0") or exists("/dev/vfio/0"):
        return "tpu"
    if exists("/dev/nvidiactl") or exists("/dev/kfd"):
        return "gpu"
    return "cpu"


def _check_platform(platform: str) -> str:
    if platform not in PLATFORMS:
        raise ConfigError(f"platform {platform!r} is not one of {', '.join(PLATFORMS)}")
    return platform


def process_numbering(ident: Identity, platform: str, processes_per_host: int = 1,
                      local_process: int = 0) -> tuple[int, int]:
    """(process_id, num_processes).

    TPU multislice numbers processes the way JAX's Cloud TPU cluster does
    (jax/_src/clusters/cloud_tpu_cluster.py): slice_id x hosts_per_slice +
    worker_id over the replicated job's slices, which is JobSet's global rank
    when that replicated job is the only one.  Elsewhere the global rank,
    times the processes each pod runs, plus this process's local index.
    """
    _check_platform(platform)
    if platform == "tpu":
        if processes_per_host != 1:
            raise ConfigError("TPU hosts run one JAX process each: leave processes_per_host at 1")
        return ident.slice_id * ident.hosts_per_slice + ident.worker_id, ident.num_slices * ident.hosts_per_slice
    if processes_per_host < 1 or not 0 <= local_process < processes_per_host:
        raise ConfigError(
            f"local_process={local_process} must lie in 0..{processes_per_host - 1} "
            f"(processes_per_host={processes_per_host})"
        )
    return ident.rank * processes_per_host + local_process, ident.world_size * processes_per_host


def coordinator_host(ident: Identity, platform: str) -> str:
    """Hostname of the pod running JAX process 0, which must host the coordination service."""
    if platform == "tpu":
        ident.require_topology("the JAX coordinator")  # fail as the numbering would, early
        return ident.slice_coordinator
    name, job_index, pod_index = ident.require_topology("the JAX coordinator").locate(0)
    return hostname_of(ident.jobset_name, name, job_index, pod_index)


def _local_device_ids(platform: str, processes_per_host: int, local_process: int,
                      devices_per_process: int | None, given: Sequence[int] | None) -> tuple[int, ...] | None:
    if given is not None:
        return tuple(int(i) for i in given)
    if platform != "gpu" or processes_per_host == 1:
        return None  # every local device belongs to the one process
    per = devices_per_process or 1
    return tuple(range(local_process * per, (local_process + 1) * per))


def distributed_args(
    ident: Identity,
    platform: str = "cpu",
    *,
    port: int = contract.JAX_PORT,
    processes_per_host: int = 1,
    local_process: int = 0,
    devices_per_process: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    initialization_timeout: int = DEFAULT_INITIALIZATION_TIMEOUT,
    heartbeat_timeout_seconds: int = DEFAULT_HEARTBEAT_TIMEOUT,
    shutdown_timeout_seconds: int = DEFAULT_SHUTDOWN_TIMEOUT,
) -> DistributedArgs:
    """The arguments of `jax.distributed.initialize` for this process; the coordinator by FQDN."""
    process_id, num_processes = process_numbering(ident, platform, processes_per_host, local_process)
    if not 0 < port < 65536:
        raise ConfigError(f"JAX coordinator port {port} is not a TCP port (1..65535)")
    for name, value in (("initialization_timeout", initialization_timeout),
                        ("heartbeat_timeout_seconds", heartbeat_timeout_seconds),
                        ("shutdown_timeout_seconds", shutdown_timeout_seconds)):
        if int(value) != value or value < 1:
            raise ConfigError(f"{name}={value!r}: JAX takes a whole number of seconds, at least 1")
    return DistributedArgs(
        coordinator_address=f"{ident.fqdn(coordinator_host(ident, platform))}:{port}",
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=_local_device_ids(platform, processes_per_host, local_process,
                                           devices_per_process, local_device_ids),
        initialization_timeout=int(initialization_timeout),
        heartbeat_timeout_seconds=int(heartbeat_timeout_seconds),
        shutdown_timeout_seconds=int(shutdown_timeout_seconds),
    )


def cpu_config(num_cpu_devices: int | None = None) -> dict:
    """jax.config values that let the same program run multi-process on CPU (gloo is the
    default since JAX 0.6; set explicitly so older versions and user config agree)."""
    config = {"jax_cpu_collectives_implementation": "gloo"}
    if num_cpu_devices is not None:
        if num_cpu_devices < 1:
            raise ConfigError(f"num_cpu_devices={num_cpu_devices} must be at least 1")
        config["jax_num_cpu_devices"] = int(num_cpu_devices)
    return config


def _tpu_env(ident: Identity, megascale_port: int | None) -> dict:
    from .exports import tpu_env

    env = tpu_env(ident)
    if megascale_port is not None:
        env[contract.MEGASCALE_PORT] = str(megascale_port)
    return env


def _watch_hosts(ident: Identity, platform: str, is_coordinator: bool, coord_fqdn: str) -> tuple[str, ...]:
    """Process 0 sees every process register, so it looks at every pod of the JAX world;
    the others look at their own slice (DNS load stays linear in pods)."""
    if is_coordinator:
        if platform == "tpu":
            hosts = [hostname_of(ident.jobset_name, ident.replicated_job, j, p)
                     for j in range(ident.num_slices) for p in range(ident.hosts_per_slice)]
        else:
            hosts = ident.all_hosts()
    else:
        hosts = ident.slice_hosts()
    fqdns = [ident.fqdn(h) for h in hosts]
    return tuple(dict.fromkeys([coord_fqdn, *fqdns]))


def plan(
    ident: Identity,
    platform: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    port: int = contract.JAX_PORT,
    timeout: float | None = None,
    initialization_timeout: int = DEFAULT_INITIALIZATION_TIMEOUT,
    heartbeat_timeout_seconds: int = DEFAULT_HEARTBEAT_TIMEOUT,
    shutdown_timeout_seconds: int = DEFAULT_SHUTDOWN_TIMEOUT,
    processes_per_host: int = 1,
    local_process: int = 0,
    devices_per_process: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    num_cpu_devices: int | None = None,
    megascale_port: int | None = contract.MEGASCALE_DEFAULT_PORT,
) -> Plan:
    """Everything `initialize` does for this identity, as values."""
    environ = os.environ if environ is None else environ
    platform = _check_platform(platform or detect_platform(environ))
    args = distributed_args(
        ident, platform, port=port, processes_per_host=processes_per_host, local_process=local_process,
        devices_per_process=devices_per_process, local_device_ids=local_device_ids,
        initialization_timeout=initialization_timeout, heartbeat_timeout_seconds=heartbeat_timeout_seconds,
        shutdown_timeout_seconds=shutdown_timeout_seconds,
    )
    if timeout is None:
        timeout = DEFAULT_DEADLINE_SHARE * args.initialization_timeout
    if not 0 < timeout < args.initialization_timeout:
        raise ConfigError(
            f"timeout={timeout:g}s must be positive and shorter than initialization_timeout="
            f"{args.initialization_timeout}s, so that our error comes before JAX aborts the process"
        )
    coord_fqdn = args.coordinator_address.rsplit(":", 1)[0]
    is_coordinator = args.process_id == 0
    return Plan(
        platform=platform,
        args=args,
        coordinator_fqdn=coord_fqdn,
        port=port,
        is_coordinator=is_coordinator,
        timeout=float(timeout),
        env=_tpu_env(ident, megascale_port) if platform == "tpu" else {},
        config=cpu_config(num_cpu_devices) if platform == "cpu" else {},
        watch_hosts=_watch_hosts(ident, platform, is_coordinator, coord_fqdn),
        family=family_of(ident.pod_ip),
    )


def wrapper_env(ident: Identity, platform: str | None = None, *, port: int = contract.JAX_PORT,
                environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What `jobset-run --jax` exports for the child (merged without overriding).

    JAX reads JAX_COORDINATOR_ADDRESS in `jax.distributed.initialize()`, and
    its Cloud TPU detection reads JAX_COORDINATOR_PORT and the libtpu names,
    so on TPU an unmodified `jax.distributed.initialize()` gets JobSet's
    values.  On CPU and GPU JAX has no env for the process count and id: the
    child calls `jobset_runtime.jax.initialize()`, which reads the identity
    back from the JOBSET_RUNTIME_* env the wrapper exports anyway.
    """
    environ = os.environ if environ is None else environ
    platform = _check_platform(platform or detect_platform(environ))
    args = distributed_args(ident, platform, port=port)
    env = {
        contract.JAX_COORDINATOR_ADDRESS_ENV: args.coordinator_address,
        contract.JAX_COORDINATOR_PORT_ENV: str(port),
    }
    if platform == "tpu":
        env.update(_tpu_env(ident, contract.MEGASCALE_DEFAULT_PORT))
    return env


# --- the JAX version at hand ------------------------------------------------------------

def supported_kwargs(initialize_fn, wanted: dict) -> tuple[dict, list[str]]:
    """Keep the arguments this JAX's `initialize` accepts; name the ones it does not.

    `cluster_detection_method` and the heartbeat/shutdown timeouts are newer
    than `initialize` itself; an older JAX without them still gets every value
    it can take, and the caller warns about the rest.
    """
    import inspect

    try:
        params = inspect.signature(initialize_fn).parameters
    except (TypeError, ValueError):
        return dict(wanted), []
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return dict(wanted), []
    kept = {k: v for k, v in wanted.items() if k in params}
    return kept, [k for k in wanted if k not in params]


# --- the I/O edge ------------------------------------------------------------------------

def _apply_env(env: Mapping[str, str]) -> None:
    from .exports import merge

    merged, warnings = merge(os.environ, env)
    for w in warnings:
        log.warning("%s", w)
    for name, value in merged.items():
        if name not in os.environ:
            os.environ[name] = value


def _apply_config(jax, config: Mapping[str, object]) -> None:
    for name, value in config.items():
        try:
            jax.config.update(name, value)
        except (AttributeError, KeyError):
            if name == "jax_num_cpu_devices":  # older JAX: the XLA flag does the same
                flag = f"--xla_force_host_platform_device_count={value}"
                os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
            else:
                log.warning("this JAX has no option %s; left unset", name)


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):
        return False


class _Watchdog:
    """At our deadline, if JAX has not finished starting, name the missing and exit 69."""

    def __init__(self, p: Plan, deadline: float, nameservers, on_timeout: Callable[[str], None]):
        self.plan, self.deadline, self.nameservers, self.on_timeout = p, deadline, nameservers, on_timeout
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="jobset-runtime-jax-watchdog", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()

    def _run(self) -> None:
        if self.done.wait(max(0.0, self.deadline - time.monotonic())):
            return
        self.on_timeout(self.message())

    def message(self) -> str:
        p = self.plan
        head = (f"jax.distributed did not start within {p.timeout:g}s (process {p.args.process_id} of "
                f"{p.args.num_processes}, coordinator {p.args.coordinator_address}); stopping before JAX's "
                f"initialization_timeout={p.args.initialization_timeout}s aborts the process")
        budget = max(1.0, min(DIAGNOSE_BUDGET_S, (p.args.initialization_timeout - p.timeout) / 2))
        try:
            from .peers import NO_REPLY, NOT_ASKED, _normalize_servers, resolve_batch

            got = resolve_batch(list(p.watch_hosts), _normalize_servers(self.nameservers),
                                tries=3, deadline=time.monotonic() + budget, family=p.family)
        except JobSetRuntimeError as e:
            return f"{head}. Could not look the peers up: {e}"
        unanswered = (NO_REPLY, NOT_ASKED)
        missing = [h for h in p.watch_hosts if h not in got.resolved and got.failed.get(h, NO_REPLY) not in unanswered]
        unknown = [h for h in p.watch_hosts if h not in got.resolved and h not in missing]
        scope = "of the JAX world" if p.is_coordinator else "of this slice and the coordinator"
        tail = f" ({len(unknown)} more not checked in {budget:g}s: {first_few(unknown, 3)})" if unknown else ""
        if missing:
            return (f"{head}. {len(missing)} of {len(p.watch_hosts)} hosts {scope} have no DNS record, so "
                    f"their pods have not started: {first_few(missing)}{tail}")
        if unknown:
            return f"{head}. DNS did not answer in time for {len(unknown)} hosts {scope}: {first_few(unknown)}"
        return (f"{head}. All {len(p.watch_hosts)} hosts {scope} resolve in DNS, so a process has not "
                "joined: look for a pod whose program is still starting, stuck, or failed before "
                "jax.distributed.initialize")


def _exit_now(message: str) -> None:
    """From the watchdog thread: the main thread is inside JAX's C++ and cannot be interrupted."""
    from .supervisor import write_termination_message

    log.error("%s", message)
    write_termination_message(message)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(PeersTimeout.exit_code)


def _ensure_logging() -> None:
    """Training code rarely configures our logger: give it the project's line format."""
    root = logging.getLogger("jobset_runtime")
    if not root.handlers:
        from . import log as _log

        _log.setup("jobset-runtime.jax")


def initialize(
    platform: str | None = None,
    *,
    port: int = contract.JAX_PORT,
    timeout: float | None = None,
    initialization_timeout: int = DEFAULT_INITIALIZATION_TIMEOUT,
    heartbeat_timeout_seconds: int = DEFAULT_HEARTBEAT_TIMEOUT,
    shutdown_timeout_seconds: int = DEFAULT_SHUTDOWN_TIMEOUT,
    processes_per_host: int = 1,
    local_process: int = 0,
    devices_per_process: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    num_cpu_devices: int | None = None,
    megascale_port: int | None = contract.MEGASCALE_DEFAULT_PORT,
    identity: Identity | None = None,
    nameservers=None,
    connect_by_ip: bool = True,
    exit_on_error: bool = True,
) -> Plan:
    """Bring `jax.distributed` up for this JobSet pod; returns the Plan that was carried out.

    `timeout` (default 0.9 x initialization_timeout) bounds everything we do,
    including JAX's own start, and must be shorter than initialization_timeout.
    `connect_by_ip`: hand JAX the address that just accepted TCP rather than
    the name, since gRPC resolves names with its own resolver (no
    JOBSET_RUNTIME_NAMESERVERS, node-local caches that keep NXDOMAIN for ~30 s:
    jax-ml/jax#28283).  With `exit_on_error` a ConfigError or PeersTimeout is
    logged, written to the termination log and ends the process with its exit
    code (2, 69) and no traceback; otherwise it is raised.
    """
    _ensure_logging()
    start = time.monotonic()
    try:
        if identity is None:
            from .podinfo import current_identity

            identity = current_identity()
        p = plan(identity, platform, port=port, timeout=timeout, initialization_timeout=initialization_timeout,
                 heartbeat_timeout_seconds=heartbeat_timeout_seconds,
                 shutdown_timeout_seconds=shutdown_timeout_seconds, processes_per_host=processes_per_host,
                 local_process=local_process, devices_per_process=devices_per_process,
                 local_device_ids=local_device_ids, num_cpu_devices=num_cpu_devices,
                 megascale_port=megascale_port)
        from . import log as _log

        _log.set_pod(identity.pod_name or identity.hostname, p.args.process_id)
        _carry_out(p, start, nameservers, connect_by_ip)
        return p
    except JobSetRuntimeError as e:
        if not exit_on_error:
            raise
        from .supervisor import write_termination_message

        log.error("%s", e)
        write_termination_message(str(e))
        raise SystemExit(e.exit_code) from None


def _carry_out(p: Plan, start: float, nameservers, connect_by_ip: bool) -> None:
    deadline = start + p.timeout
    _apply_env(p.env)  # libtpu reads these when the backend starts, after jax.distributed
    from .extras import require

    require("jax", "jobset_runtime.jax.initialize()")  # or jax[tpu], jax[cuda12]: any jax will do
    import jax

    if _backends_started():
        raise ConfigError(
            "a JAX backend has already started in this process (a jax.devices() or computation ran "
            "first): call jobset_runtime.jax.initialize() before any other JAX call"
        )
    _apply_config(jax, p.config)

    from . import peers

    wait_port = None if p.is_coordinator else p.port
    log.info("process %d of %d: waiting for coordinator %s%s, up to %.0fs", p.args.process_id,
             p.args.num_processes, p.coordinator_fqdn, f" port {p.port}" if wait_port else "",
             deadline - time.monotonic())
    addresses = peers.wait_for_hosts([p.coordinator_fqdn], port=wait_port, nameservers=nameservers,
                                     timeout=max(0.001, deadline - time.monotonic()), family=p.family)
    kwargs = p.args.kwargs()
    if connect_by_ip:
        kwargs["coordinator_address"] = join_host_port(addresses[p.coordinator_fqdn], p.port)
    kwargs, dropped = supported_kwargs(jax.distributed.initialize, kwargs)
    if dropped:
        log.warning("JAX %s's jax.distributed.initialize takes no %s; upgrade JAX to set them",
                    getattr(jax, "__version__", "?"), ", ".join(dropped))
    log.info("jax.distributed.initialize(%s)", ", ".join(f"{k}={v!r}" for k, v in kwargs.items()))
    with _Watchdog(p, deadline, nameservers, _exit_now):
        jax.distributed.initialize(**kwargs)
    log.info("jax.distributed started in %.2fs", time.monotonic() - start)
