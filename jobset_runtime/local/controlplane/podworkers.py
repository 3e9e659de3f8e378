"""The kubelet's pod workers, for the node agent (node.py): one NodePod per pod bound to
our nodes, and NodeKubelet, which runner.Runner calls its controller.

Container sequencing and restarts with the kubelet's back-off (podlifecycle.py, shared
with the embedded controller), deletion with a grace period, and the status written back
to the API (podstatus.py), as pkg/kubelet/kuberuntime SyncPod and the status manager do
it.  Everything here runs on the runner's one loop.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ... import contract
from ...errors import ConfigError
from ..podlifecycle import CRASH_BACKOFF_INITIAL, Container, PodContainers, PodLifecycle, PodPhase, containers_of
from . import podstatus
from .podstatus import ContainerState, PodState

if TYPE_CHECKING:
    from .node import NodeRuntime
    from .nodeapi import NodeApi

CONFIG_RETRY_SECONDS = 2.0  # a missing Secret/ConfigMap is looked up again
LOG_FALLBACK_LINES = 80     # FallbackToLogsOnError: the log's tail, as the kubelet takes it
LOG_FALLBACK_BYTES = 2048


class NodePod(PodContainers):
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
        self.containers, self.init_containers = containers_of(spec)
        self.objects: dict = {}
        self.ip = ""
        self.init_next = 0
        self.phase = PodPhase.PENDING
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


class NodeKubelet(PodLifecycle):
    """What runner.Runner calls its controller: PodLifecycle's container sequencing and
    restarts, with the status written as the kubelet's status manager does it."""

    finished = False
    terminal_state = None
    restarts = 0

    def __init__(self, rt: NodeRuntime, api: NodeApi, crash_backoff: float = CRASH_BACKOFF_INITIAL):
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
        super().sandbox_ready(pod)
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

    def _initialized(self, pod: NodePod) -> None:
        pod.state.initialized = True

    def _pod_running(self, pod: NodePod) -> None:
        pod.state.phase = pod.phase
        self.rt.event(f"pod {pod.namespace}/{pod.name} running on {pod.node}, ip {pod.ip}")

    def _status_changed(self, pod: NodePod) -> None:
        self.push(pod)

    def container_started(self, pod: NodePod, c: Container) -> None:
        pod.cstate(c).started = True
        super().container_started(pod, c)

    def readiness_changed(self, pod: NodePod) -> None:
        """Ready = every main container and sidecar running, started and ready
        (pkg/kubelet/status/generate.go GeneratePodReadyCondition)."""
        for c in pod.all_containers():
            pod.cstate(c).ready = c.running and c.started and c.ready
        ready = (pod.started and pod.phase == PodPhase.RUNNING and not pod.stopping and
                 all(c.running and c.started and c.ready for c in pod.containers + pod.sidecars))
        pod.ready = pod.state.ready = ready
        self.push(pod)

    def container_exited(self, pod: NodePod, c: Container, code: int) -> None:
        cs = pod.cstate(c)
        cs.terminated = podstatus.terminated(code, self._message(c, c.handle, code), cs.running_since,
                                             f"jobset-runtime://{pod.uid}-{c.name}-{cs.run}")
        cs.running_since, cs.ready, cs.started = "", False, False
        super().container_exited(pod, c, code)

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
        cs.waiting_reason = "CrashLoopBackOff"
        cs.waiting_message = f"back-off restarting failed container {c.name}"
        delay = self._schedule_restart(pod, c)
        self.rt.event(f"pod {pod.namespace}/{pod.name}: container {c.name} exited with {c.exit_code}; "
                      f"restarting in {delay:g} s")
        self.readiness_changed(pod)

    def _pod_terminal(self, pod: NodePod, phase: PodPhase) -> None:
        pod.phase = pod.state.phase = phase
        pod.ready = pod.state.ready = False
        self.rt.event(f"pod {pod.namespace}/{pod.name} {phase.value}")
        self._stop_sidecars(pod)
        self.push(pod)

    def pod_gone(self, pod: NodePod) -> None:
        """Its processes ended and its namespaces are released."""
        pod.gone = True
        if pod.stopping:
            self._forget(pod)
