"""The kubelet's part of a pod's life, shared by both local backends.

Init containers in order (a sidecar, an init container with restartPolicy Always,
is started and left running once its startupProbe passes), then the main
containers together; a container's exit, its in-place restart with the kubelet's
back-off, and the sidecars stopped once the main containers are done
(pkg/kubelet/kuberuntime/kuberuntime_manager.go SyncPod, KEP-753).

PodLifecycle is subclassed by the embedded controller (controller.py, with the Job
and JobSet controllers above it) and by the node agent's pod workers
(controlplane/podworkers.py, which write the status to the API); each fills in the
hooks below.  The runtime (runner.py) runs the processes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# pkg/kubelet/kubelet.go: container restart back-off starts at 10 s, doubles, caps at 300 s.
CRASH_BACKOFF_INITIAL = 10.0
CRASH_BACKOFF_MAX = 300.0


class ContainerKind(str, enum.Enum):
    MAIN = "main"
    INIT = "init"
    SIDECAR = "sidecar"  # an init container with restartPolicy Always


class PodPhase(str, enum.Enum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


TERMINAL = (PodPhase.SUCCEEDED, PodPhase.FAILED)


@dataclass
class Container:
    spec: dict
    kind: ContainerKind = ContainerKind.MAIN
    handle: object = None       # the runtime's process handle while running
    running: bool = False
    exit_code: int | None = None
    restarts: int = 0
    started: bool = False       # startupProbe passed (or none)
    ready: bool = False         # readinessProbe passed (or none) while running

    @property
    def name(self) -> str:
        return self.spec.get("name", "")


def containers_of(pod_spec: dict) -> tuple[list, list]:
    """(main containers, init containers and sidecars) of a pod spec, none started."""
    inits = [Container(spec=c, kind=ContainerKind.SIDECAR if c.get("restartPolicy") == "Always"
                       else ContainerKind.INIT) for c in pod_spec.get("initContainers") or []]
    return [Container(spec=c) for c in pod_spec["containers"]], inits


def should_restart(kind: ContainerKind, policy: str, code: int) -> bool:
    """pkg/kubelet/container/helpers.go ShouldContainerBeRestarted: a sidecar always,
    else by the pod's restartPolicy (the API's default is Always)."""
    return kind == ContainerKind.SIDECAR or policy == "Always" or (code != 0 and policy == "OnFailure")


class PodContainers:
    """The container views both backends' pods share (they hold `containers`, the
    main ones, and `init_containers`)."""

    def all_containers(self):
        return self.init_containers + self.containers

    @property
    def sidecars(self):
        return [c for c in self.init_containers if c.kind == ContainerKind.SIDECAR]


class PodLifecycle:
    """Container sequencing, exits and restarts of the pods on one kubelet.

    A subclass sets `rt` (the runtime), `crash_backoff` and `halted` (start nothing
    more), and defines `readiness_changed(pod)`, `_pod_terminal(pod, phase)`,
    `_pod_running(pod)` and `_restart_later(pod, container)`; the other hooks do
    nothing by default."""

    rt = None
    crash_backoff = CRASH_BACKOFF_INITIAL
    halted = False

    # --- hooks ----------------------------------------------------------------------
    def _spawn(self, pod, c: Container) -> bool:
        """Start `c`; False when it could not be started and the pod has to wait."""
        self.rt.spawn(pod, c)
        return True

    def _initialized(self, pod) -> None:
        """Every init container is done and every sidecar started."""

    def _container_down(self, pod, c: Container) -> None:
        """`c` exited while the pod runs, before its restart is decided."""

    def _may_restart(self, pod) -> bool:
        """Whether a restart whose back-off has passed still applies."""
        return True

    def _status_changed(self, pod) -> None:
        """The pod's state changed with no readiness change to report it."""

    # --- the sequence ---------------------------------------------------------------
    def sandbox_ready(self, pod) -> None:
        """The pod has its IP, namespaces and volumes: run its containers."""
        self._advance(pod)

    def _advance(self, pod) -> None:
        if pod.stopping or self.halted:
            return
        while pod.init_next < len(pod.init_containers):
            c = pod.init_containers[pod.init_next]
            if c.kind == ContainerKind.INIT and c.exit_code == 0 and not c.running:
                pod.init_next += 1
                continue
            if not c.running and not self._spawn(pod, c):
                return
            if c.kind == ContainerKind.INIT or not c.started:
                return  # wait for it to exit (init) or to pass its startupProbe (sidecar)
            pod.init_next += 1
        self._initialized(pod)
        if not pod.started:
            for c in pod.containers:
                if not c.running and not self._spawn(pod, c):
                    return
            pod.started = True
            pod.phase = PodPhase.RUNNING
            self._pod_running(pod)
        self.readiness_changed(pod)

    def container_started(self, pod, c: Container) -> None:
        """The startupProbe passed (at once when there is none)."""
        c.started = True
        if c.kind == ContainerKind.SIDECAR and not pod.started:
            self._advance(pod)
        self.readiness_changed(pod)

    def container_exited(self, pod, c: Container, code: int) -> None:
        c.running, c.handle, c.exit_code, c.ready, c.started = False, None, code, False, False
        if pod.stopping or pod.phase in TERMINAL:
            self._maybe_gone(pod)
            self._status_changed(pod)
            return
        self._container_down(pod, c)
        if should_restart(c.kind, pod.spec.get("restartPolicy", "Always"), code):
            # In place: same pod, same IP.
            c.restarts += 1
            self._restart_later(pod, c)
            return
        if c.kind == ContainerKind.INIT:
            if code == 0:
                self._advance(pod)
            else:
                self._pod_terminal(pod, PodPhase.FAILED)
            self._status_changed(pod)
            return
        if any(x.running for x in pod.containers):
            self.readiness_changed(pod)
            return
        self._pod_terminal(pod, PodPhase.SUCCEEDED if all(x.exit_code == 0 for x in pod.containers)
                           else PodPhase.FAILED)

    def _schedule_restart(self, pod, c: Container) -> float:
        """Restart `c` after the back-off of its restart count; the delay."""
        delay = min(self.crash_backoff * 2 ** (c.restarts - 1), CRASH_BACKOFF_MAX)
        self.rt.call_later(delay, lambda: self._restart_container(pod, c))
        return delay

    def _restart_container(self, pod, c: Container) -> None:
        if pod.stopping or pod.phase in TERMINAL or self.halted or not self._may_restart(pod):
            return
        self._spawn(pod, c)
        if c.kind == ContainerKind.INIT:
            self._status_changed(pod)
        else:
            self.readiness_changed(pod)

    def _stop_sidecars(self, pod) -> None:
        """Main containers done: the kubelet stops the sidecars (KEP-753); the pod ends once nothing runs."""
        live = [c for c in pod.sidecars if c.running]
        if live:
            self.rt.stop_containers(pod, live, float(pod.spec.get("terminationGracePeriodSeconds", 30)))
        self._maybe_gone(pod)

    def _maybe_gone(self, pod) -> None:
        if not any(c.running for c in pod.all_containers()) and not pod.ended:
            pod.ended = True
            self.rt.pod_ended(pod)
