"""The runner: one thread, one selector, that starts pods, relays their output,
feeds process exits to the controller and keeps the DNS records in step.

Pod lifecycle here, as the kubelet and the endpoints controller do it:
IP assigned -> DNS record (publishNotReadyAddresses, the JobSet default; else
once Ready) -> containers started -> Running/Ready -> exits -> record removed,
namespace deleted.  Everything the run created is undone by `close()`, which
is idempotent and also runs at interpreter exit.
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from .. import contract
from . import kubelet, probes
from .controller import Controller, Pod, subdomain_of
from .podlifecycle import Container
from .pods import LOOPBACK_LIMITS, Loopback, Network, RootlessNetwork, run_id
from .result import INTERRUPTED, TIMEOUT, ReplicatedJobCounts, Result


def _primary_gid(uid: int) -> int | None:
    """The user's group in this machine's /etc/passwd (the local runner's "image")."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return None


class _Proc:
    """One container process: its Popen, pidfd and output buffer."""

    def __init__(self, pod, container, popen, log):
        self.pod, self.container, self.popen, self.log = pod, container, popen, log
        self.pidfd = os.pidfd_open(popen.pid)
        self.buf = b""
        self.out_open = True
        self.exited = False
        self.kill_timer = None
        self.terminating = False  # SIGTERM sent: the kubelet signals a container once, then waits


class Runner:
    def __init__(self, js: dict, objects: dict, *, run_dir: str, mode: str = "netns",
                 dns_delay: float = 0.0, skew: dict | None = None, out=None,
                 crash_backoff: float | None = None, pod_backoff: float | None = None,
                 interrupt_grace: float = 5.0, state_dir: str | None = None, ip_family: str = "ipv4",
                 mtu: int | None = None):
        self.js = js
        self.objects = objects
        self.dns_delay = dns_delay
        self._init_runtime(run_dir=run_dir, mode=mode, out=out, interrupt_grace=interrupt_grace, state_dir=state_dir,
                           ip_family=ip_family, mtu=mtu)
        self.namespace = js["metadata"].get("namespace", "default")
        self.subdomain = subdomain_of(js)
        kw = {}
        if crash_backoff is not None:
            kw["crash_backoff"] = crash_backoff
        if pod_backoff is not None:
            kw["pod_backoff"] = pod_backoff
        self.ctl = Controller(js, self, skew=skew, **kw)

    def _init_runtime(self, *, run_dir: str, mode: str, out, interrupt_grace: float, state_dir: str | None,
                      ip_family: str = "ipv4", mtu: int | None = None) -> None:
        """The pod machinery alone (processes, namespaces, probes, the loop), without a
        controller: the cluster's node agent (controlplane/node.py) brings its own."""
        self.run_dir = run_dir
        self.out = out or sys.stdout
        self.interrupt_grace = interrupt_grace
        self.run_id = run_id()
        if mode == "netns":
            self.net = Network(self.run_id, ip_family)
        elif mode == "rootless":
            # Only inside the user namespace cli.run_rootless made; state_dir is a directory of ours.
            self.net = RootlessNetwork(self.run_id, state_dir, ip_family)
        else:
            self.net = Loopback(self.run_id)
        self.net.mtu = mtu
        self.domain = contract.DEFAULT_CLUSTER_DOMAIN
        self.sel = selectors.DefaultSelector()
        self._results: list = []
        import socket
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._timers: list = []
        self._seq = itertools.count()
        self._pending: list = []       # pods waiting for their namespaces
        self._procs: dict = {}         # pidfd -> _Proc
        self._by_pod: dict = {}        # pod name -> [ _Proc ]
        self._slots: dict = {}         # pod name -> netns name
        self._ended: list = []         # pods whose processes ended; namespaces to release
        self._created_dirs: list = []  # mountpoints we had to make
        self.dns = None
        self._closed = False
        self._open_dir: str | None = None
        self._t0 = time.monotonic()
        self._service_ips: dict = {}
        self.nameserver = ""
        self._stopped = None

    # --- runtime interface used by the controller ---------------------------------
    def event(self, msg: str) -> None:
        self._print(f"[{time.monotonic() - self._t0:7.2f}s] {msg}")

    def call_later(self, delay: float, fn):
        entry = [time.monotonic() + delay, next(self._seq), fn, True]
        heapq.heappush(self._timers, entry)
        return entry

    def wake(self) -> None:
        pass  # single-threaded: the loop looks at the controller after every event

    def start_pod(self, pod: Pod) -> None:
        self._pending.append(pod)

    def pod_has_processes(self, pod: Pod) -> bool:
        return bool(self._by_pod.get(pod.name))

    def spawn(self, pod: Pod, container: Container) -> None:
        self._spawn(pod, container)

    def stop_containers(self, pod: Pod, containers, grace: float) -> None:
        for p in self._by_pod.get(pod.name) or []:
            if p.container in containers:
                self._terminate(p, grace)

    def pod_ready_changed(self, pod: Pod) -> None:
        # publishNotReadyAddresses false: only Ready pods are in the Service's endpoints.
        if not self.js["spec"]["network"].get("publishNotReadyAddresses", True) and not pod.stopping:
            if pod.ready:
                self._dns_add(pod)
            elif pod.ip:
                self._dns_remove(pod)

    def stop_pod(self, pod: Pod, grace: float) -> None:
        procs = self._by_pod.get(pod.name) or []
        if not procs:
            if pod in self._pending:
                self._pending.remove(pod)
            self.pod_ended(pod)
            return
        for p in procs:
            self._terminate(p, grace)

    def _terminate(self, p: _Proc, grace: float) -> None:
        """SIGTERM, then SIGKILL after the grace period; a container already stopping is left to it."""
        if p.terminating:
            if p.kill_timer is not None and p.kill_timer[0] > time.monotonic() + grace:
                p.kill_timer[3] = False  # a shorter grace (Ctrl-C, --timeout) still applies
                p.kill_timer = self.call_later(grace, lambda: self._signal(p, signal.SIGKILL))
            return
        p.terminating = True
        self._signal(p, signal.SIGTERM)
        p.kill_timer = self.call_later(grace, lambda: self._signal(p, signal.SIGKILL))

    def pod_ended(self, pod: Pod) -> None:
        if pod.ip:
            self._dns_remove(pod)
        self._ended.append(pod)

    # --- process handling ------------------------------------------------------------
    def _signal(self, proc: _Proc, sig) -> None:
        if proc.exited:
            return
        try:
            os.killpg(proc.popen.pid, sig)
        except OSError:
            pass

    def _facts(self, pod: Pod) -> kubelet.PodFacts:
        return kubelet.PodFacts(
            name=pod.name, namespace=self.namespace, uid=pod.uid, labels=pod.labels,
            annotations=pod.annotations, hostname=pod.hostname,
            subdomain=self.subdomain if self.js["spec"]["network"].get("enableDNSHostnames", True) else "",
            pod_ip=pod.ip, pod_ips=self.net.pod_ips(pod.ip), host_ip="127.0.0.1", node_name=os.uname().nodename,
            service_account=pod.spec.get("serviceAccountName", "default"),
            node_cpus=os.cpu_count() or 1,
            node_memory=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            objects=self.objects)

    def _launch_pending(self) -> None:
        pods, self._pending = self._pending, []
        pods = [p for p in pods if not p.stopping]
        if not pods:
            return
        slots = []
        for pod in pods:
            ns, ip = self.net.new_slot()
            pod.ip = ip
            self._slots[pod.name] = ns
            if ns:
                slots.append((ns, ip))
        self.net.create(slots)
        for pod in pods:
            self.prepare(pod)

    def prepare(self, pod: Pod) -> None:
        """The kubelet's volume and /etc set-up of a pod that has its namespaces, then its containers."""
        facts = self._facts(pod)
        self._write_volumes(pod, facts)
        if self.net.namespaced:
            self.net.write_etc(self._slots[pod.name], kubelet.hosts_file(facts, pod.spec.get("hostAliases") or ()),
                               kubelet.resolv_conf(self.namespace, self.dns.address[0], self.domain,
                                                   pod.spec.get("dnsPolicy"), pod.spec.get("dnsConfig")))
        if self.js["spec"]["network"].get("publishNotReadyAddresses", True):
            self._dns_add(pod)
        pod._facts = facts
        self.event(f"pod {pod.name} started, ip {pod.ip}")
        self.ctl.sandbox_ready(pod)

    def _can_set_ids(self) -> bool:
        """Users and groups are set only by the host's root in netns mode: a rootless runner
        maps no other id, and in loopback mode a pod's files (podinfo) sit in the run dir,
        which another user may not be able to reach."""
        return os.geteuid() == 0 and self.net.mode == "netns"

    def _write_volumes(self, pod: Pod, facts) -> None:
        """The kubelet's volume set-up: files with their modes, then, with an fsGroup,
        group ownership and group permissions (pkg/volume/volume_linux.go SetVolumeOwnership)."""
        pod_dir = os.path.join(self.run_dir, "pods", pod.name)
        os.makedirs(pod_dir, exist_ok=True)
        pod._volume_dirs = {}
        fs_group = (pod.spec.get("securityContext") or {}).get("fsGroup")
        if not self._can_set_ids():
            fs_group = None
        for vol in pod.spec.get("volumes") or []:
            d = os.path.join(pod_dir, "volumes", vol["name"])
            os.makedirs(d, exist_ok=True)
            files = kubelet.volume_files(facts, vol)
            default_mode, modes = kubelet.volume_file_modes(vol)
            if files is None:
                os.chmod(d, 0o777)  # an emptyDir is open to every user (pkg/volume/emptydir/empty_dir.go)
            for rel, content in (files or {}).items():
                path = os.path.join(d, rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(content)
                os.chmod(path, modes.get(rel, default_mode))
            if fs_group is not None:
                read_only = files is not None  # secret, configMap and downwardAPI volumes are read-only
                for top, dirs, names in os.walk(d):
                    for path in [top, *(os.path.join(top, n) for n in names)]:
                        os.lchown(path, -1, fs_group)
                        os.chmod(path, kubelet.fs_group_mode(os.stat(path).st_mode & 0o7777, read_only=read_only,
                                                             is_dir=os.path.isdir(path)))
            pod._volume_dirs[vol["name"]] = (d, vol)

    def _mounts(self, pod: Pod, container: dict) -> list:
        """(src, dst, mode) steps for SHIM: `ov` overlays a tmpfs-backed layer on an
        existing directory so a missing mountpoint can be made inside the pod's own
        mount namespace (the host's filesystem is never written), `dir`/`file` make
        that mountpoint, `ro`/`rw` bind a volume."""
        binds, missing = [], []
        for vm in container.get("volumeMounts") or []:
            src, vol = pod._volume_dirs.get(vm["name"], (None, None))
            if src is None:
                from ..errors import ConfigError
                raise ConfigError(f"container {container.get('name')}: volumeMount {vm['name']!r} names no volume of the pod")
            if vm.get("subPath"):
                src = os.path.join(src, vm["subPath"])
            dst = os.path.normpath(vm["mountPath"])
            if not os.path.exists(dst):
                missing.append((dst, os.path.isfile(src)))
            read_only = bool(vm.get("readOnly")) or (vol is not None and any(k in vol for k in ("secret", "configMap", "downwardAPI")))
            binds.append((src, dst, "ro" if read_only else "rw"))
        steps, anchors = [], []
        for dst, is_file in missing:
            anchor = os.path.dirname(dst)
            while not os.path.isdir(anchor):
                anchor = os.path.dirname(anchor)
            if anchor == "/" or any(ch in anchor for ch in ",:"):
                try:
                    self._make_mountpoint(dst, is_file)  # cannot overlay /: made on the host, removed at the end
                except OSError as e:
                    from ..errors import ConfigError
                    raise ConfigError(f"container {container.get('name')}: cannot create mountPath {dst} "
                                      f"({e.strerror}); create it first (rootless mode cannot write /) or "
                                      "mount under a directory that exists")
                continue
            if anchor not in anchors:
                anchors.append(anchor)
            steps.append(("-", dst, "file" if is_file else "dir"))
        if anchors:
            scratch = os.path.join(self.run_dir, "pods", pod.name, f"mnt-{container.get('name') or 'c'}")
            layers = []
            for i, anchor in enumerate(sorted(anchors, key=lambda d: d.count("/"))):
                layer = os.path.join(scratch, str(i))
                os.makedirs(layer, exist_ok=True)
                layers.append((layer, anchor, "ov"))
            # An overlay on /etc (or above it) hides the pod's hosts and resolv.conf binds: redo them.
            ns_etc = os.path.join(self.net.etc_dir, self._slots[pod.name])
            for name in ("hosts", "resolv.conf"):
                target = os.path.join("/etc", name)
                if any(target.startswith(a.rstrip("/") + "/") for a in anchors):
                    layers.append((os.path.join(ns_etc, name), target, "rw"))
            steps = layers + steps
        return steps + binds

    def _make_mountpoint(self, dst: str, is_file: bool) -> None:
        # The pods share this machine's filesystem: a mountpoint that does not exist
        # is made (and removed at the end, if still empty).
        parts = []
        d = os.path.dirname(dst) if is_file else dst
        while d and not os.path.exists(d):
            parts.append(d)
            d = os.path.dirname(d)
        for p in reversed(parts):
            os.mkdir(p)
            self._created_dirs.append(p)
        if is_file:
            open(dst, "a").close()
            self._created_dirs.append(dst)

    def _base_env(self) -> dict:
        # The container gets this machine's environment (standing in for the image's:
        # PATH, HOME, a virtualenv) without our own identity variables or HOSTNAME.
        return {k: v for k, v in os.environ.items()
                if not k.startswith(contract.ENV_PREFIX) and k != contract.HOSTNAME_ENV}

    def _spawn(self, pod: Pod, c: Container, facts=None) -> None:
        facts = facts or getattr(pod, "_facts", None) or self._facts(pod)
        spec = c.spec
        env = kubelet.container_env(facts, spec, extra={contract.HOSTNAME_ENV: pod.hostname})
        # pkg/controller/job/indexed_job_utils.go addCompletionIndexEnvVariable: the Job
        # controller adds JOB_COMPLETION_INDEX from the annotation to every container.
        if pod.index is not None:
            env.setdefault(contract.JOB_COMPLETION_INDEX_ENV, str(pod.index))
        argv = kubelet.container_argv(spec, env)
        creds = kubelet.credentials(pod.spec, spec, _primary_gid)
        if creds.set and self._can_set_ids():
            argv = kubelet.setpriv_argv(creds) + argv
        cdir = os.path.join(self.run_dir, "pods", pod.name)
        term = os.path.join(cdir, f"{c.name or 'container'}.termination-log")
        if creds.uid not in (None, os.geteuid()) and self._can_set_ids():
            # The run dir may sit under a directory only we can enter (a home, pytest's tmp):
            # the file goes where that user can pass, and is that user's alone to write.
            term = os.path.join(self._private_dir(), f"{pod.name}.{c.name or 'container'}.termination-log")
            open(term, "w").close()
            os.chown(term, creds.uid, creds.gid)
        else:
            open(term, "w").close()
        env[contract.TERMINATION_LOG_ENV] = term
        full_env = self._base_env()
        full_env.update(env)
        workdir = spec.get("workingDir") or ""
        if self.net.namespaced:
            cmd = self.net.argv(self._slots[pod.name], pod.hostname, workdir, self._mounts(pod, spec), argv)
            cwd = None
        else:
            cmd, cwd = argv, workdir or None
            full_env[contract.NAMESERVERS_ENV] = self.nameserver
            for name, (d, vol) in pod._volume_dirs.items():
                if "downwardAPI" in vol:
                    full_env.setdefault(contract.PODINFO_ENV, d)
        multi = len(pod.containers) > 1
        log_path = os.path.join(self.run_dir, f"{pod.name}.{c.name}.log" if multi else f"{pod.name}.log")
        log = open(log_path, "ab")
        try:
            popen = subprocess.Popen(cmd, env=full_env, cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        except OSError as e:
            log.write(f"cannot start: {e}\n".encode())
            log.close()
            c.running = False
            self.call_later(0, lambda: self.ctl.container_exited(pod, c, 128))
            return
        proc = _Proc(pod, c, popen, log)
        proc.term = term
        proc.prefix = f"[{pod.name}/{c.name}] " if multi else f"[{pod.name}] "
        os.set_blocking(popen.stdout.fileno(), False)
        self.sel.register(popen.stdout, selectors.EVENT_READ, ("out", proc))
        self.sel.register(proc.pidfd, selectors.EVENT_READ, ("exit", proc))
        self._by_pod.setdefault(pod.name, []).append(proc)
        c.handle = proc
        c.running = True
        c.exit_code = None
        proc.env = full_env
        proc.probes = probes.parse(spec)
        proc.probe_state = {}
        c.started = "startupProbe" not in proc.probes
        c.ready = "readinessProbe" not in proc.probes
        for kind in proc.probes:
            proc.probe_state[kind] = [0, 0]  # consecutive successes, failures
        # Readiness and liveness probes wait until the startupProbe has passed.
        first = [k for k in proc.probes if k == "startupProbe"] or list(proc.probes)
        for kind in first:
            self.call_later(proc.probes[kind].initial_delay, lambda k=kind, p=proc: self._probe(p, k))

    # --- probes --------------------------------------------------------------------
    def _probe(self, proc: _Proc, kind: str) -> None:
        if proc.exited or proc.pod.stopping:
            return
        probe = proc.probes[kind]
        ns = self._slots.get(proc.pod.name, "")
        netns_path = self.net.netns_path(ns) if ns else None
        prefix = (["nsenter", "-t", str(proc.popen.pid), "-n", "-m", "-u", "--"] if ns else [])
        probes.run_async(probe, container=proc.container.spec, pod_ip=proc.pod.ip, netns_path=netns_path,
                         exec_prefix=prefix, env=proc.env,
                         post=lambda ok: self._post((proc, kind, ok)))

    def post(self, fn) -> None:
        """Run `fn()` on the loop, from any thread (the node agent's API watches)."""
        self._post(fn)

    def cancel_start(self, pod) -> bool:
        """Forget a pod still waiting for its namespaces; False if it is past that."""
        if pod in self._pending:
            self._pending.remove(pod)
            return True
        return False

    def _post(self, item) -> None:
        # From a probe thread: queue the result and wake the loop.
        self._results.append(item)
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _probe_result(self, proc: _Proc, kind: str, ok: bool) -> None:
        if proc.exited or proc.pod.stopping:
            return
        c, probe, state = proc.container, proc.probes[kind], proc.probe_state[kind]
        state[0], state[1] = (state[0] + 1, 0) if ok else (0, state[1] + 1)
        again = probe.period
        if kind == "startupProbe":
            if ok:
                self.event(f"pod {proc.pod.name}: container {c.name} started (startupProbe)")
                for k in proc.probes:
                    if k != "startupProbe":
                        self.call_later(proc.probes[k].initial_delay, lambda k=k: self._probe(proc, k))
                self.ctl.container_started(proc.pod, c)
                return
            if state[1] >= probe.failure_threshold:
                self.event(f"pod {proc.pod.name}: container {c.name} failed its startupProbe; killing it")
                self._signal(proc, signal.SIGKILL)
                return
        elif kind == "readinessProbe":
            if ok and not c.ready and state[0] >= probe.success_threshold:
                c.ready = True
                self.ctl.readiness_changed(proc.pod)
            elif not ok and c.ready and state[1] >= probe.failure_threshold:
                c.ready = False
                self.ctl.readiness_changed(proc.pod)
        elif kind == "livenessProbe" and state[1] >= probe.failure_threshold:
            self.event(f"pod {proc.pod.name}: container {c.name} failed its livenessProbe; killing it")
            self._signal(proc, signal.SIGKILL)
            return
        self.call_later(again, lambda: self._probe(proc, kind))

    def _read(self, proc: _Proc) -> None:
        if not proc.out_open:
            return
        try:
            data = os.read(proc.popen.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_out(proc)
            return
        self._emit(proc, data)

    def _emit(self, proc: _Proc, data: bytes) -> None:
        """Save a container's output and print its complete lines, prefixed with the pod."""
        proc.log.write(data)
        proc.buf += data
        *lines, proc.buf = proc.buf.split(b"\n")
        for line in lines:
            self._print(proc.prefix + line.decode(errors="replace"))

    def _close_out(self, proc: _Proc) -> None:
        if not proc.out_open:
            return
        proc.out_open = False
        if proc.buf:
            self._print(proc.prefix + proc.buf.decode(errors="replace"))
            proc.buf = b""
        try:
            self.sel.unregister(proc.popen.stdout)
        except (KeyError, ValueError):
            pass
        proc.popen.stdout.close()
        proc.log.close()

    def _exited(self, proc: _Proc) -> None:
        if proc.exited:
            return
        self.sel.unregister(proc.pidfd)
        os.close(proc.pidfd)
        code = proc.popen.wait()
        proc.exited = True
        if proc.kill_timer is not None:
            proc.kill_timer[3] = False
        # The container runtime kills the rest of a container when its main process ends.
        try:
            os.killpg(proc.popen.pid, signal.SIGKILL)
        except OSError:
            pass
        # Drain what is left in the pipe, then close it (a stray child holding it open
        # must not keep the pod alive).
        while proc.out_open:
            try:
                data = os.read(proc.popen.stdout.fileno(), 65536)
            except OSError:
                data = b""
            if not data:
                self._close_out(proc)
                break
            self._emit(proc, data)
        procs = self._by_pod.get(proc.pod.name, [])
        if proc in procs:
            procs.remove(proc)
        if not procs:
            self._by_pod.pop(proc.pod.name, None)
        code = 128 - code if code < 0 else code  # killed by signal N -> 128 + N
        msg = self._termination_message(proc)
        if msg:
            self.event(f"pod {proc.pod.name}: termination message: {msg}")
        self.ctl.container_exited(proc.pod, proc.container, code)

    def _private_dir(self) -> str:
        """A directory every user can pass through but not list (0711), for files that
        containers running as other users must reach; removed by close()."""
        if self._open_dir is None:
            self._open_dir = tempfile.mkdtemp(prefix=f"{self.net.cluster_ns}-files-")
            os.chmod(self._open_dir, 0o711)
        return self._open_dir

    def _termination_message(self, proc: _Proc) -> str:
        try:
            with open(proc.term, "rb") as f:
                return f.read(contract.TERMINATION_MESSAGE_MAX).decode(errors="replace").strip()
        except OSError:
            return ""

    def _release_ended(self) -> None:
        pods, self._ended = self._ended, []
        names = [self._slots.pop(p.name, "") for p in pods]
        self.net.release([n for n in names if n])
        for p in pods:
            self.ctl.pod_gone(p)

    # --- DNS -----------------------------------------------------------------------
    def _fqdn(self, pod: Pod) -> str:
        return f"{pod.hostname}.{self.subdomain}.{self.namespace}.svc.{self.domain}"

    def _dns_add(self, pod: Pod) -> None:
        if self.dns is None or not self.js["spec"]["network"].get("enableDNSHostnames", True):
            return
        self.dns.set(self._fqdn(pod), self.net.pod_ips(pod.ip), visible_after=self.dns_delay)
        self._service_ips[pod.name] = self.net.pod_ips(pod.ip)
        self._set_service()

    def _dns_remove(self, pod: Pod) -> None:
        if self.dns is None:
            return
        # Only if the record is still this pod's (a newer pod may hold the hostname).
        if sorted(self.dns.records().get(self._fqdn(pod).lower() + ".") or ()) == sorted(self.net.pod_ips(pod.ip)):
            self.dns.remove(self._fqdn(pod))
        self._service_ips.pop(pod.name, None)
        self._set_service()

    def _set_service(self) -> None:
        # The headless Service name itself answers with every published pod.
        name = f"{self.subdomain}.{self.namespace}.svc.{self.domain}"
        ips = sorted({ip for ips in self._service_ips.values() for ip in ips})
        if ips:
            self.dns.set(name, ips)
        else:
            self.dns.remove(name)

    def _start_dns(self) -> None:
        from .dns import DnsServer  # lazy: dnspython

        host, port = self.net.dns_address()
        server = DnsServer(host, port, zones=(self.domain,))
        if self.net.namespaced:
            from .pods import setns_thread_call
            setns_thread_call(self.net.cluster_netns_path, server.start)
        else:
            server.start()
        self.dns = server
        self.nameserver = server.nameserver

    def preflight(self) -> None:
        """Resolve every container's env, command and volumes once with placeholder pod
        facts, so a missing Secret key or command is reported before anything starts."""
        from .controller import pod_metadata

        ids_notice = False
        for rj in self.ctl.rjobs:
            labels, annotations = pod_metadata(self.js, rj["name"], 0, 0, 0)
            pod_spec = rj["template"]["spec"]["template"]["spec"]
            facts = kubelet.PodFacts(name="preflight", namespace=self.namespace, uid="", labels=labels,
                                     annotations=annotations, hostname="preflight", subdomain=self.subdomain,
                                     pod_ip="198.18.0.2", host_ip="127.0.0.1", node_name="node", objects=self.objects)
            names = set()
            for vol in pod_spec.get("volumes") or []:
                kubelet.volume_files(facts, vol)
                kubelet.volume_file_modes(vol)
                names.add(vol.get("name"))
            for c in pod_spec["containers"] + (pod_spec.get("initContainers") or []):
                kubelet.container_argv(c, kubelet.container_env(facts, c))
                if kubelet.credentials(pod_spec, c).set and not self._can_set_ids() and not ids_notice:
                    ids_notice = True
                    self._print(f"notice: {self.net.mode} mode as uid {os.geteuid()}: securityContext users and "
                                "groups (runAsUser, runAsGroup, fsGroup, supplementalGroups) are not applied; "
                                "containers run as this user. Run as root in netns mode to apply them.")
                probes.parse(c)
                for vm in c.get("volumeMounts") or []:
                    if vm.get("name") not in names:
                        from ..errors import ConfigError
                        raise ConfigError(f"replicatedJob {rj['name']}, container {c.get('name')}: volumeMount "
                                          f"{vm.get('name')!r} names no volume of the pod; add it to spec.volumes")

    # --- main loop -------------------------------------------------------------------
    def _print(self, line: str) -> None:
        try:
            self.out.write(line + "\n")
            self.out.flush()
        except (OSError, ValueError):
            pass

    def run(self, timeout: float | None = None) -> int:
        atexit.register(self.close)
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

        def interrupt(signum, frame):
            raise KeyboardInterrupt

        for s in old:
            signal.signal(s, interrupt)
        outcome = None
        try:
            try:
                self.preflight()
                os.makedirs(self.run_dir, exist_ok=True)
                if self.net.mode == "loopback":
                    self._print("notice: " + LOOPBACK_LIMITS)
                self.net.setup()
                self._start_dns()
                self._print(f"run directory: {self.run_dir}")
                where = f" (namespaces {self.net.cluster_ns}*)" if self.net.namespaced else ""
                self.event(f"jobset {self.ctl.name}: mode {self.net.mode}{where}, DNS {self.nameserver}")
                if timeout:
                    self.call_later(timeout, lambda: self._stop(TIMEOUT))
                self.ctl.start()
                outcome = self._loop()
            except KeyboardInterrupt:
                self._print("interrupted: stopping every pod")
                outcome = INTERRUPTED
                try:
                    self._stop(INTERRUPTED)
                    self._loop()
                except KeyboardInterrupt:
                    pass
        finally:
            self.close()
            for s, h in old.items():
                signal.signal(s, h)
        result = self._result(outcome)
        for line in result.lines():
            self._print(line)
        self._print(f"logs: {self.run_dir}")
        return result.exit_code()

    def _stop(self, why: str) -> None:
        """--timeout or Ctrl-C: every pod gets SIGTERM, then SIGKILL after its grace
        period capped at `interrupt_grace` (the user is waiting)."""
        self._stopped = why
        self.ctl.halted = True
        self.event(f"{why}: stopping every pod")
        for pod in self.ctl.live_pods():
            if pod.stopping and self._by_pod.get(pod.name):
                for p in self._by_pod[pod.name]:
                    if p.kill_timer is not None:
                        p.kill_timer[3] = False
                    p.kill_timer = self.call_later(self.interrupt_grace, lambda p=p: self._signal(p, signal.SIGKILL))
                continue
            pod.stopping = True
            pod.ready = False
            grace = min(self.interrupt_grace, float(pod.spec.get("terminationGracePeriodSeconds", 30)))
            if self._by_pod.get(pod.name):
                self.stop_pod(pod, grace)
            else:
                if pod in self._pending:
                    self._pending.remove(pod)
                pod.gone = True

    def _loop(self):
        while True:
            if self._pending:
                self._launch_pending()
            if self._ended:
                self._release_ended()
                continue
            if (self.ctl.finished or self._stopped) and not self.ctl.live_pods() and not self._by_pod:
                return self._stopped or self.ctl.terminal_state
            now = time.monotonic()
            while self._timers and (not self._timers[0][3] or self._timers[0][0] <= now):
                entry = heapq.heappop(self._timers)
                if entry[3]:
                    entry[2]()
                    if self._pending or self._ended:
                        break
            if self._pending or self._ended:
                continue
            timeout = None
            if self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
            if len(self.sel.get_map()) <= 1 and timeout is None and not self._results:
                if self.ctl.live_pods():
                    # Pods whose start never happened (stopped before launch).
                    for p in self.ctl.live_pods():
                        if not self._by_pod.get(p.name):
                            self.pod_ended(p)
                    continue
                return self._stopped or self.ctl.terminal_state
            for key, _ in self.sel.select(timeout):
                kind, proc = key.data
                if kind == "out":
                    self._read(proc)
                elif kind == "exit":
                    self._exited(proc)
                else:
                    try:
                        self._wake_r.recv(4096)
                    except OSError:
                        pass
                    while self._results:
                        item = self._results.pop(0)
                        item() if callable(item) else self._probe_result(*item)

    # --- status and cleanup ------------------------------------------------------------
    def _result(self, outcome) -> Result:
        rjobs = tuple(ReplicatedJobCounts(rj["name"], **self.ctl.rjob_status(rj["name"])) for rj in self.ctl.rjobs)
        return Result(self.ctl.name, outcome, self.ctl.terminal_state or "", self.ctl.restarts,
                      completed=self.ctl.terminal_state == "Completed",
                      suspended=bool(self.js["spec"].get("suspend", False)), age=time.monotonic() - self._t0,
                      rjobs=rjobs, reason=self.ctl.terminal_reason or "", message=self.ctl.terminal_message or "")

    def close(self) -> None:
        """Kill every process, stop DNS, delete namespaces, files and mountpoints. Idempotent."""
        if self._closed:
            return
        if threading.current_thread() is threading.main_thread():
            # A second Ctrl-C must not cut the cleanup short; run() restores the handlers.  Before
            # _closed is set: a KeyboardInterrupt between the two would skip every cleanup for good.
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
        self._closed = True
        for procs in list(self._by_pod.values()):
            for p in procs:
                self._signal(p, signal.SIGKILL)
        for procs in list(self._by_pod.values()):
            for p in procs:
                try:
                    p.popen.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
                try:
                    os.close(p.pidfd)
                except OSError:
                    pass
                if p.out_open:
                    p.out_open = False
                    p.popen.stdout.close()
                    p.log.close()
        self._by_pod.clear()
        try:
            self.net.cleanup()
        finally:
            if self.dns is not None:
                self.dns.stop()
            for d in reversed(self._created_dirs):
                try:
                    if os.path.isdir(d):
                        os.rmdir(d)
                    elif os.path.getsize(d) == 0:
                        os.unlink(d)
                except OSError:
                    pass
            if self._open_dir is not None:
                shutil.rmtree(self._open_dir, ignore_errors=True)
            self.sel.close()
            self._wake_r.close()
            self._wake_w.close()
            try:
                atexit.unregister(self.close)
            except Exception:
                pass

