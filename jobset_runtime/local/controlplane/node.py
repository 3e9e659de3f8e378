"""The node agent: this machine as one or more Kubernetes Nodes, in place of kubelet + container runtime.

    python -m jobset_runtime.local.controlplane.node --kubeconfig FILE --nodes N [...]

It registers the Nodes (labels and capacity from the command line), renews
their Leases and Ready condition, and runs every pod the scheduler binds to
them with the local runner's pod machinery (runner.Runner's processes,
namespaces, volumes, probes): the live Pod object is the input, so the
downward-API files, fieldRefs and Secret/ConfigMap references are resolved from
the API, and the status goes back to the API as the kubelet writes it
(podstatus.py).  A pod being deleted gets SIGTERM, its grace period, then
SIGKILL; once its processes are gone the agent removes the object (grace 0),
as the kubelet does.  Cluster DNS for the pods is served here too (clusterdns.py).

The API side runs in threads (watches, heartbeats, status writes); everything
that touches pods runs on the runner's one loop, reached through Runner.post.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

from ... import contract
from ...errors import ConfigError
from .. import kubelet
from ..controller import Container
from ..runner import Runner
from . import podstatus
from .podstatus import ContainerState, PodState

LEASE_SECONDS = 40         # the kubelet's default nodeLeaseDurationSeconds
HEARTBEAT_SECONDS = 10.0   # lease renewals and Ready heartbeats (kubelet: 10 s)
CONFIG_RETRY_SECONDS = 2.0  # a missing Secret/ConfigMap is looked up again
CRASH_BACKOFF = 10.0        # the kubelet's first restart delay, doubling to 300 s
CRASH_BACKOFF_MAX = 300.0
LOG_FALLBACK_LINES = 80     # FallbackToLogsOnError: the log's tail, as the kubelet takes it
LOG_FALLBACK_BYTES = 2048


class NodePod:
    """One pod bound to one of our nodes: the shape Runner's pod methods expect."""

    def __init__(self, obj: dict, node: str):
        md, spec = obj["metadata"], obj["spec"]
        self.obj = obj
        self.node = node
        self.name, self.namespace, self.uid = md["name"], md.get("namespace", "default"), md["uid"]
        self.key = (self.namespace, self.name)
        self.hostname = spec.get("hostname") or md["name"]
        self.labels = dict(md.get("labels") or {})
        self.annotations = dict(md.get("annotations") or {})
        idx = self.annotations.get(contract.JOB_COMPLETION_INDEX_KEY)
        self.index = int(idx) if idx is not None and idx.isdigit() else None
        self.containers = [Container(spec=c) for c in spec["containers"]]
        self.init_containers = [Container(spec=c, kind="sidecar" if c.get("restartPolicy") == "Always" else "init")
                                for c in spec.get("initContainers") or []]
        self.objects: dict = {}
        self.ip = ""
        self.init_next = 0
        self.phase = "Pending"
        self.stopping = False      # being deleted (or the agent is stopping)
        self.gone = False          # every process ended and the namespaces are released
        self.started = False       # main containers started
        self.ready = False
        self.ended = False
        self.prepared = False      # volumes written, sandbox ready
        self.deleted = False       # the object is gone from the API
        self.state = PodState(uid=self.uid, start_time=podstatus.now_rfc3339())
        self.state.containers = [ContainerState(c.name, c.spec.get("image", ""), "main",
                                                waiting_reason="ContainerCreating") for c in self.containers]
        self.state.init_containers = [ContainerState(c.name, c.spec.get("image", ""), c.kind,
                                                     waiting_reason="PodInitializing") for c in self.init_containers]
        if self.init_containers:
            for cs in self.state.containers:
                cs.waiting_reason = "PodInitializing"

    @property
    def spec(self) -> dict:
        return self.obj["spec"]

    def all_containers(self):
        return self.init_containers + self.containers

    @property
    def sidecars(self):
        return [c for c in self.init_containers if c.kind == "sidecar"]

    def cstate(self, c: Container) -> ContainerState:
        if c in self.containers:
            return self.state.containers[self.containers.index(c)]
        return self.state.init_containers[self.init_containers.index(c)]


def referenced_objects(spec: dict) -> set[tuple[str, str]]:
    """(kind, name) of every Secret and ConfigMap the pod's env and volumes name."""
    refs = set()
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        for e in c.get("env") or []:
            vf = e.get("valueFrom") or {}
            if "secretKeyRef" in vf:
                refs.add(("Secret", vf["secretKeyRef"].get("name", "")))
            if "configMapKeyRef" in vf:
                refs.add(("ConfigMap", vf["configMapKeyRef"].get("name", "")))
        for src in c.get("envFrom") or []:
            if "secretRef" in src:
                refs.add(("Secret", src["secretRef"].get("name", "")))
            if "configMapRef" in src:
                refs.add(("ConfigMap", src["configMapRef"].get("name", "")))
    for v in spec.get("volumes") or []:
        if "secret" in v:
            refs.add(("Secret", v["secret"].get("secretName", "")))
        if "configMap" in v:
            refs.add(("ConfigMap", v["configMap"].get("name", "")))
    return refs


# --- the kubelet's pod workers, on the runner's loop ----------------------------------------

class NodeKubelet:
    """What runner.Runner calls its controller: container sequencing, restarts and
    status, as pkg/kubelet/kuberuntime SyncPod and the status manager do it."""

    finished = False
    terminal_state = None
    restarts = 0

    def __init__(self, rt: NodeRuntime, api: NodeApi, crash_backoff: float = CRASH_BACKOFF):
        self.rt, self.api, self.crash_backoff = rt, api, crash_backoff
        self.pods: dict = {}       # (namespace, name) -> NodePod
        self.halted = False

    def live_pods(self):
        return [p for p in self.pods.values() if not p.gone]

    def push(self, pod: NodePod) -> None:
        if not pod.deleted:
            self.api.write_status(pod.namespace, pod.name, pod.uid, pod.state.status())

    # --- pods from the API ------------------------------------------------------------------
    def pod_event(self, kind: str, obj: dict, node: str, objects: dict) -> None:
        md = obj["metadata"]
        key = (md.get("namespace", "default"), md["name"])
        pod = self.pods.get(key)
        if pod is not None and pod.uid != md["uid"]:
            pod = None  # an older pod of the same name: its own teardown is under way
        if kind == "DELETED":
            if pod is not None:
                pod.deleted = True
                self._delete(pod, 0.0)
            return
        phase = (obj.get("status") or {}).get("phase")
        if pod is None:
            if md.get("deletionTimestamp") or phase in ("Succeeded", "Failed") or self.halted:
                if md.get("deletionTimestamp"):
                    self.api.delete_pod(key[0], key[1], md["uid"])  # nothing of it runs here
                return
            pod = NodePod(obj, node)
            pod.objects = objects
            self.pods[key] = pod
            self.rt.event(f"pod {pod.namespace}/{pod.name} bound to {node}")
            self.push(pod)
            self.rt.start_pod(pod)
            return
        pod.obj = obj
        pod.labels = dict(md.get("labels") or {})
        pod.annotations = dict(md.get("annotations") or {})
        if objects:
            pod.objects = objects
        if md.get("deletionTimestamp") and not pod.stopping:
            grace = md.get("deletionGracePeriodSeconds")
            if grace is None:
                grace = obj["spec"].get("terminationGracePeriodSeconds", 30)
            self._delete(pod, float(grace))

    def _delete(self, pod: NodePod, grace: float) -> None:
        """SIGTERM, the grace period, SIGKILL (Runner._terminate); the object goes once nothing runs."""
        if pod.stopping:
            if pod.gone:
                self._forget(pod)
            return
        pod.stopping = True
        pod.ready = False
        self.rt.event(f"pod {pod.namespace}/{pod.name} deleted: stopping it (grace {grace:g} s)")
        if pod.gone or (pod.ended and not self.rt.pod_has_processes(pod)):
            self._forget(pod)
            return
        if not pod.prepared:
            self.rt.cancel_start(pod)
        self.rt.stop_pod(pod, grace)

    def _forget(self, pod: NodePod) -> None:
        if self.pods.get(pod.key) is pod:
            del self.pods[pod.key]
        if not pod.deleted:
            pod.deleted = True
            self.api.delete_pod(pod.namespace, pod.name, pod.uid)

    # --- from the runtime -----------------------------------------------------------------
    def sandbox_ready(self, pod: NodePod) -> None:
        pod.prepared = True
        pod.state.sandbox = True
        pod.state.pod_ip = pod.ip
        pod.state.reason = pod.state.message = ""
        self._advance(pod)
        self.push(pod)

    def config_error(self, pod: NodePod, c: Container | None, message: str) -> None:
        """A Secret, ConfigMap or key it names is missing: the kubelet keeps the pod
        Pending with CreateContainerConfigError and tries again."""
        targets = [pod.cstate(c)] if c is not None else pod.state.containers
        for cs in targets:
            cs.waiting_reason, cs.waiting_message = "CreateContainerConfigError", message
        self.push(pod)
        self.rt.event(f"pod {pod.namespace}/{pod.name}: {message}")

        def again(objects):
            pod.objects = objects
            if pod.stopping:
                return
            if not pod.prepared:
                self.rt.prepare(pod)
            else:
                self._advance(pod)
                self.push(pod)

        self.rt.call_later(CONFIG_RETRY_SECONDS, lambda: self.api.fetch_objects_async(
            pod.namespace, pod.spec, lambda objs: self.rt.post(lambda: again(objs))))

    def _spawn(self, pod: NodePod, c: Container) -> bool:
        try:
            self.rt.spawn(pod, c)
        except ConfigError as e:
            self.config_error(pod, c, str(e))
            return False
        cs = pod.cstate(c)
        if c.running:
            cs.run += 1
            cs.running_since = podstatus.now_rfc3339()
            cs.terminated = None
            cs.waiting_reason = cs.waiting_message = ""
            cs.started, cs.ready = c.started, c.ready and c.started
        return c.running

    def _advance(self, pod: NodePod) -> None:
        """Init containers in order (a sidecar is started and left running once its
        startupProbe passes), then the main containers together."""
        if pod.stopping or self.halted:
            return
        while pod.init_next < len(pod.init_containers):
            c = pod.init_containers[pod.init_next]
            if c.kind == "init" and c.exit_code == 0 and not c.running:
                pod.init_next += 1
                continue
            if not c.running and not self._spawn(pod, c):
                return
            if c.kind == "init" or not c.started:
                return
            pod.init_next += 1
        pod.state.initialized = True
        if not pod.started:
            for c in pod.containers:
                if not c.running and not self._spawn(pod, c):
                    return
            pod.started = True
            pod.phase = pod.state.phase = "Running"
            self.rt.event(f"pod {pod.namespace}/{pod.name} running on {pod.node}, ip {pod.ip}")
        self.readiness_changed(pod)

    def container_started(self, pod: NodePod, c: Container) -> None:
        c.started = True
        pod.cstate(c).started = True
        if c.kind == "sidecar" and not pod.started:
            self._advance(pod)
        self.readiness_changed(pod)

    def readiness_changed(self, pod: NodePod) -> None:
        """Ready = every main container and sidecar running, started and ready
        (pkg/kubelet/status/generate.go GeneratePodReadyCondition)."""
        for c in pod.all_containers():
            pod.cstate(c).ready = c.running and c.started and c.ready
        ready = (pod.started and pod.phase == "Running" and not pod.stopping and
                 all(c.running and c.started and c.ready for c in pod.containers + pod.sidecars))
        pod.ready = pod.state.ready = ready
        self.push(pod)

    def container_exited(self, pod: NodePod, c: Container, code: int) -> None:
        proc = c.handle
        c.running, c.handle, c.exit_code, c.ready, c.started = False, None, code, False, False
        cs = pod.cstate(c)
        cs.terminated = podstatus.terminated(code, self._message(c, proc, code), cs.running_since,
                                             f"jobset-runtime://{pod.uid}-{c.name}-{cs.run}")
        cs.running_since, cs.ready, cs.started = "", False, False
        if pod.stopping or pod.phase in ("Succeeded", "Failed"):
            self._maybe_gone(pod)
            self.push(pod)
            return
        policy = pod.spec.get("restartPolicy", "Always")
        if c.kind == "sidecar" or policy == "Always" or (code != 0 and policy == "OnFailure"):
            self._restart_later(pod, c)
            self.readiness_changed(pod)
            return
        if c.kind == "init":
            if code == 0:
                self._advance(pod)
            else:
                self._terminal(pod, "Failed")
            self.push(pod)
            return
        if any(x.running for x in pod.containers):
            self.readiness_changed(pod)
            return
        self._terminal(pod, "Succeeded" if all(x.exit_code == 0 for x in pod.containers) else "Failed")

    def _message(self, c: Container, proc, code: int) -> str:
        """The termination message file; with FallbackToLogsOnError and a failure, the log's tail."""
        msg = ""
        if proc is not None:
            msg = self.rt._termination_message(proc)
            if not msg and code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
                try:
                    with open(proc.log.name, "rb") as f:
                        f.seek(0, os.SEEK_END)
                        f.seek(max(0, f.tell() - LOG_FALLBACK_BYTES))
                        msg = b"\n".join(f.read().splitlines()[-LOG_FALLBACK_LINES:]).decode(errors="replace")
                except OSError:
                    pass
        return msg[:contract.TERMINATION_MESSAGE_MAX]

    def _restart_later(self, pod: NodePod, c: Container) -> None:
        cs = pod.cstate(c)
        cs.last_terminated, cs.terminated = cs.terminated, None
        cs.restarts += 1
        c.restarts += 1
        cs.waiting_reason = "CrashLoopBackOff"
        cs.waiting_message = f"back-off restarting failed container {c.name}"
        delay = min(self.crash_backoff * 2 ** (c.restarts - 1), CRASH_BACKOFF_MAX)
        self.rt.event(f"pod {pod.namespace}/{pod.name}: container {c.name} exited with {c.exit_code}; "
                      f"restarting in {delay:g} s")

        def again():
            if pod.stopping or pod.phase in ("Succeeded", "Failed") or self.halted:
                return
            self._spawn(pod, c)
            if c.kind != "init":
                self.readiness_changed(pod)
            else:
                self.push(pod)

        self.rt.call_later(delay, again)

    def _terminal(self, pod: NodePod, phase: str) -> None:
        pod.phase = pod.state.phase = phase
        pod.ready = pod.state.ready = False
        self.rt.event(f"pod {pod.namespace}/{pod.name} {phase}")
        live_sidecars = [c for c in pod.sidecars if c.running]
        if live_sidecars:
            self.rt.stop_containers(pod, live_sidecars, float(pod.spec.get("terminationGracePeriodSeconds", 30)))
        self._maybe_gone(pod)
        self.push(pod)

    def _maybe_gone(self, pod: NodePod) -> None:
        if not any(c.running for c in pod.all_containers()) and not pod.ended:
            pod.ended = True
            self.rt.pod_ended(pod)

    def pod_gone(self, pod: NodePod) -> None:
        """Its processes ended and its namespaces are released."""
        pod.gone = True
        if pod.stopping:
            self._forget(pod)


# --- the runtime: Runner's machinery with pods from the API ---------------------------------

class NodeRuntime(Runner):
    def __init__(self, api: NodeApi, *, run_dir: str, mode: str, out=None, crash_backoff: float = CRASH_BACKOFF,
                 domain: str = contract.DEFAULT_CLUSTER_DOMAIN, dns_delay: float = 0.0):
        self.js = None
        self.objects = {}
        self.dns_delay = dns_delay
        self._init_runtime(run_dir=run_dir, mode=mode, out=out, interrupt_grace=5.0, state_dir=None)
        self.domain = domain
        self.api = api
        self.ctl = NodeKubelet(self, api, crash_backoff)
        self.cluster_dns = None

    def _facts(self, pod: NodePod) -> kubelet.PodFacts:
        return kubelet.PodFacts(
            name=pod.name, namespace=pod.namespace, uid=pod.uid, labels=pod.labels, annotations=pod.annotations,
            hostname=pod.hostname, subdomain=pod.spec.get("subdomain", ""), pod_ip=pod.ip, host_ip="127.0.0.1",
            node_name=pod.node, service_account=pod.spec.get("serviceAccountName", "default"),
            cluster_domain=self.domain, node_cpus=os.cpu_count() or 1,
            node_memory=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), objects=pod.objects)

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

    def prepare(self, pod: NodePod) -> None:
        """The kubelet's volume and /etc set-up from the live Pod, then its containers."""
        facts = self._facts(pod)
        pod_dir = os.path.join(self.run_dir, "pods", pod.name)
        os.makedirs(pod_dir, exist_ok=True)
        try:
            self._write_volumes(pod, facts, pod_dir)
        except ConfigError as e:
            self.ctl.config_error(pod, None, str(e))
            return
        if self.net.namespaced:
            self.net.write_etc(self._slots[pod.name], kubelet.hosts_file(facts, pod.spec.get("hostAliases") or ()),
                               kubelet.resolv_conf(pod.namespace, self.nameserver.split(":")[0], self.domain))
        pod._facts = facts
        self.ctl.sandbox_ready(pod)

    def _spawn(self, pod: NodePod, c: Container, facts=None) -> None:
        # Refreshed facts: a label or annotation changed since the pod started (JobSet's
        # restart-attempt) is what a restarted container's fieldRef env sees, as on a kubelet.
        super()._spawn(pod, c, facts=self._facts(pod))

    def pod_ready_changed(self, pod) -> None:
        pass  # endpoints and DNS follow the Pod's Ready condition through the API

    def pod_ended(self, pod) -> None:
        self._ended.append(pod)

    def _release_ended(self) -> None:
        pods, self._ended = self._ended, []
        names = [self._slots.pop(p.name, "") for p in pods]
        self.net.release([n for n in names if n])
        for p in pods:
            self.ctl.pod_gone(p)

    def _start_dns(self) -> None:
        super()._start_dns()
        from .clusterdns import ClusterDns

        self.cluster_dns = ClusterDns(self.api, self.dns, self.domain, delay=self.dns_delay)
        self.cluster_dns.start()

    def serve(self, on_ready) -> int:
        """Until SIGTERM/SIGINT: then every pod is stopped (grace capped) and everything undone."""
        import atexit

        atexit.register(self.close)

        def interrupt(signum, frame):
            raise KeyboardInterrupt

        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, interrupt)
        try:
            try:
                os.makedirs(self.run_dir, exist_ok=True)
                self.net.setup()
                self._start_dns()
                self.event(f"node agent: mode {self.net.mode}, DNS {self.nameserver}, pods in {self.run_dir}")
                self._stopped = None
                self._tick()
                on_ready()
                self._loop()
            except KeyboardInterrupt:
                self.event("stopping every pod")
                try:
                    self.ctl.halted = True
                    self._stop("stopping")
                    self._loop()
                except KeyboardInterrupt:
                    pass
        finally:
            if self.cluster_dns is not None:
                self.cluster_dns.stop()
            self.close()
        return 0

    def _tick(self) -> None:
        # A timer always pending keeps the loop waiting for pods that are yet to come.
        if not self._stopped:
            self.call_later(1.0, self._tick)


# --- the API side: threads ------------------------------------------------------------------

class NodeApi:
    def __init__(self, kubeconfig: str, nodes: list[str], labels: list[dict], capacity: dict):
        from lightkube import Client
        from lightkube.config.kubeconfig import KubeConfig

        self.config = KubeConfig.from_file(kubeconfig)
        self.client = Client(self.config, field_manager="jobset-runtime-node")
        self.nodes, self.labels, self.capacity = nodes, labels, capacity
        self.stopping = threading.Event()
        self._status: dict = {}
        self._status_cv = threading.Condition()
        self._threads: list = []

    def new_client(self):
        from lightkube import Client

        return Client(self.config, field_manager="jobset-runtime-node")

    # --- nodes and leases -----------------------------------------------------------------
    def _node_status(self) -> dict:
        now = podstatus.now_rfc3339()
        cond = lambda t, s, r, m: {"type": t, "status": s, "reason": r, "message": m,
                                   "lastHeartbeatTime": now, "lastTransitionTime": now}
        return {
            "capacity": self.capacity, "allocatable": self.capacity,
            "conditions": [cond("Ready", "True", "KubeletReady", "jobset-runtime node agent is posting ready status"),
                           cond("MemoryPressure", "False", "KubeletHasSufficientMemory", ""),
                           cond("DiskPressure", "False", "KubeletHasNoDiskPressure", ""),
                           cond("PIDPressure", "False", "KubeletHasSufficientPID", "")],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "nodeInfo": {"kubeletVersion": contract.KUBERNETES_VERSION, "kubeProxyVersion": "",
                         "operatingSystem": "linux", "architecture": os.uname().machine.replace("x86_64", "amd64"),
                         "containerRuntimeVersion": "jobset-runtime://local", "osImage": "", "kernelVersion":
                         os.uname().release, "machineID": "", "systemUUID": "", "bootID": ""},
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        }

    def register(self) -> None:
        from lightkube.core.exceptions import ApiError
        from lightkube.resources.coordination_v1 import Lease
        from lightkube.resources.core_v1 import Node

        for name, labels in zip(self.nodes, self.labels):
            body = {"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                                          "kubernetes.io/arch": "amd64", **labels}},
                    "spec": {}}
            try:
                self.client.create(Node.from_dict(body))
            except ApiError as e:
                if e.status.code != 409:
                    raise
                self.client.patch(Node, name, {"metadata": {"labels": body["metadata"]["labels"]}})
            self.client.patch(Node.Status, name, {"status": self._node_status()})
            lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                     "metadata": {"name": name, "namespace": "kube-node-lease"},
                     "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS,
                              "renewTime": _micro_now()}}
            try:
                self.client.create(Lease.from_dict(lease))
            except ApiError as e:
                if e.status.code != 409:
                    raise

    def heartbeat(self) -> None:
        from lightkube.resources.coordination_v1 import Lease
        from lightkube.resources.core_v1 import Node

        client = self.new_client()
        while not self.stopping.wait(HEARTBEAT_SECONDS):
            for name in self.nodes:
                try:
                    client.patch(Lease, name, {"spec": {"renewTime": _micro_now()}}, namespace="kube-node-lease")
                    client.patch(Node.Status, name, {"status": {"conditions": self._node_status()["conditions"]}})
                except Exception as e:  # the API server may be restarting: try again next beat
                    print(f"node heartbeat {name}: {e}", file=sys.stderr, flush=True)

    def unregister(self) -> None:
        from lightkube.resources.coordination_v1 import Lease
        from lightkube.resources.core_v1 import Node

        for name in self.nodes:
            for res, ns in ((Lease, "kube-node-lease"), (Node, None)):
                try:
                    self.client.delete(res, name, namespace=ns)
                except Exception:
                    pass

    # --- pods ---------------------------------------------------------------------------
    def fetch_objects(self, namespace: str, spec: dict, client=None) -> dict:
        from lightkube.core.exceptions import ApiError
        from lightkube.resources.core_v1 import ConfigMap, Secret

        client = client or self.new_client()
        out = {}
        for kind, name in referenced_objects(spec):
            try:
                obj = client.get(Secret if kind == "Secret" else ConfigMap, name, namespace=namespace)
            except ApiError as e:
                if e.status.code == 404:
                    continue  # kubelet.container_env / volume_files name it
                raise
            out[(kind, name)] = obj.to_dict()
        return out

    def fetch_objects_async(self, namespace: str, spec: dict, then) -> None:
        def body():
            try:
                then(self.fetch_objects(namespace, spec))
            except Exception as e:
                print(f"fetch for {namespace}: {e}", file=sys.stderr, flush=True)
                then({})
        threading.Thread(target=body, daemon=True).start()

    def watch_pods(self, node: str, post) -> None:
        """Every pod bound to `node`: list, then watch from that version; again on error."""
        from lightkube import ALL_NS
        from lightkube.resources.core_v1 import Pod

        client = self.new_client()
        fields = {"spec.nodeName": node}
        while not self.stopping.is_set():
            try:
                for kind, obj in client.watch(Pod, namespace=ALL_NS, fields=fields):
                    if self.stopping.is_set():
                        return
                    d = obj.to_dict()
                    objects = {}
                    if kind != "DELETED" and not d["metadata"].get("deletionTimestamp"):
                        objects = self.fetch_objects(d["metadata"].get("namespace", "default"), d["spec"], client)
                    post(kind, d, node, objects)
            except Exception as e:
                if self.stopping.is_set():
                    return
                print(f"pod watch on {node}: {e}; watching again", file=sys.stderr, flush=True)
                time.sleep(1.0)

    def write_status(self, namespace: str, name: str, uid: str, status: dict) -> None:
        """Latest wins: a pod's statuses queued while one is being written collapse into one."""
        with self._status_cv:
            self._status[(namespace, name)] = ("status", uid, status)
            self._status_cv.notify()

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        with self._status_cv:
            self._status[(namespace, name)] = ("delete", uid, None)
            self._status_cv.notify()

    def status_writer(self) -> None:
        from lightkube.core.exceptions import ApiError
        from lightkube.resources.core_v1 import Pod

        client = self.new_client()
        while True:
            with self._status_cv:
                while not self._status and not self.stopping.is_set():
                    self._status_cv.wait(1.0)
                if not self._status and self.stopping.is_set():
                    return
                key = next(iter(self._status))
                what, uid, status = self._status.pop(key)
            ns, name = key
            try:
                if what == "status":
                    # The UID is a precondition: a newer pod of the same name is not touched.
                    client.patch(Pod.Status, name, {"metadata": {"uid": uid}, "status": status}, namespace=ns)
                else:
                    client.delete(Pod, name, namespace=ns, grace_period=0)
            except ApiError as e:
                if e.status.code not in (404, 409):
                    print(f"pod {ns}/{name} {what}: {e}", file=sys.stderr, flush=True)
            except Exception as e:
                print(f"pod {ns}/{name} {what}: {e}", file=sys.stderr, flush=True)

    def start_threads(self, post_pod) -> None:
        targets = [(self.heartbeat, ()), (self.status_writer, ())]
        targets += [(self.watch_pods, (n, post_pod)) for n in self.nodes]
        for fn, args in targets:
            t = threading.Thread(target=fn, args=args, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self.stopping.set()
        with self._status_cv:
            self._status_cv.notify_all()
        self._threads[1].join(timeout=10)  # the status writer: what is queued gets written


def _micro_now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_labels(items: list[str], n: int) -> list[dict]:
    """Node i gets the i-th --node-labels (cycled): one pool value per group of nodes."""
    sets = []
    for item in items:
        d = {}
        for kv in item.split(","):
            k, sep, v = kv.partition("=")
            if not sep or not k:
                raise ConfigError(f"--node-labels {item!r}: expected KEY=VALUE[,KEY=VALUE...]")
            d[k.strip()] = v.strip()
        sets.append(d)
    return [dict(sets[i * len(sets) // n]) if sets else {} for i in range(n)]


def parse_capacity(items: list[str]) -> dict:
    cap = {"cpu": str(os.cpu_count() or 1), "pods": "110",
           "memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 1024}Ki",
           "ephemeral-storage": "100Gi"}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k or not v:
            raise ConfigError(f"--node-capacity {item!r}: expected RESOURCE=QUANTITY, e.g. google.com/tpu=4")
        cap[k] = v
    return cap


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobset_runtime.local.controlplane.node",
                                description="Register Nodes and run the pods bound to them on this machine.")
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--state-dir", required=True, help="pod logs and volumes go to DIR/pods")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--node-name-prefix", default="jobset-runtime-")
    p.add_argument("--node-labels", action="append", default=[], metavar="K=V[,K=V]")
    p.add_argument("--node-capacity", action="append", default=[], metavar="RESOURCE=QUANTITY")
    p.add_argument("--mode", choices=("auto", "netns"), default="auto")
    p.add_argument("--workdir", default=None, help="containers without workingDir start here")
    p.add_argument("--crash-backoff", type=float, default=CRASH_BACKOFF)
    p.add_argument("--dns-delay", type=float, default=0.0, metavar="S", help="new DNS names become visible S s late")
    a = p.parse_args(argv)
    try:
        from ..cli import choose_mode

        from ..cli import NEEDS_ROOT

        mode = choose_mode(a.mode)
        if mode != "netns":
            raise ConfigError(NEEDS_ROOT)
        names = [f"{a.node_name_prefix}{i}" for i in range(a.nodes)]
        api = NodeApi(a.kubeconfig, names, parse_labels(a.node_labels, a.nodes), parse_capacity(a.node_capacity))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if a.workdir:
        os.chdir(a.workdir)
    rt = NodeRuntime(api, run_dir=os.path.join(os.path.abspath(a.state_dir), "pods"), mode=mode,
                     crash_backoff=a.crash_backoff, dns_delay=a.dns_delay)
    def post_pod(kind, obj, node, objects):
        rt.post(lambda: rt.ctl.pod_event(kind, obj, node, objects))

    def ready():
        api.register()
        api.start_threads(post_pod)
        rt.event(f"nodes {', '.join(names)} registered")

    try:
        return rt.serve(ready)
    finally:
        api.stop()
        api.unregister()


if __name__ == "__main__":
    sys.exit(main())
