"""A pod's status as the kubelet reports it, from the node agent's view of its containers.

Pure: state in, the `status` dict of a PATCH to pods/status out.  Field by field
as pkg/kubelet/kubelet_pods.go generateAPIPodStatus / convertToAPIContainerStatuses
and pkg/kubelet/status/generate.go build them: phase, conditions (with their
transition times kept while the status does not change), host and pod IPs,
startTime, and for every container its state (waiting / running / terminated
with exit code, reason and termination message), lastState, restartCount,
started and ready.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerState:
    """What the agent knows of one container (init, sidecar or main)."""
    name: str
    image: str = ""
    kind: str = "main"             # main, init, sidecar
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    running_since: str = ""        # RFC 3339, while running
    started: bool = False          # startupProbe passed (or none)
    ready: bool = False
    restarts: int = 0
    terminated: dict | None = None      # the current run's end, while not running
    last_terminated: dict | None = None  # the previous run's end (lastState)
    run: int = 0                   # how many times it was started: part of the containerID


def terminated(code: int, message: str, started_at: str, container_id: str) -> dict:
    """pkg/kubelet/kuberuntime: reason Completed for 0, Error otherwise (no OOM killer here)."""
    t = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "startedAt": started_at or None,
         "finishedAt": now_rfc3339(), "containerID": container_id}
    if message:
        t["message"] = message
    return t


def _container_status(c: ContainerState, pod_uid: str) -> dict:
    cid = f"jobset-runtime://{pod_uid}-{c.name}-{c.run}" if c.run else ""
    if c.running_since:
        state = {"running": {"startedAt": c.running_since}}
    elif c.terminated is not None:
        state = {"terminated": c.terminated}
    else:
        w = {"reason": c.waiting_reason}
        if c.waiting_message:
            w["message"] = c.waiting_message
        state = {"waiting": w}
    st = {"name": c.name, "image": c.image, "imageID": "", "ready": c.ready, "started": c.started,
          "restartCount": c.restarts, "state": state,
          "lastState": {"terminated": c.last_terminated} if c.last_terminated else {}}
    if cid:
        st["containerID"] = cid
    return st


@dataclass
class PodState:
    uid: str
    phase: str = "Pending"
    pod_ip: str = ""
    host_ip: str = "127.0.0.1"
    start_time: str = ""
    sandbox: bool = False          # namespaces and IP ready
    initialized: bool = False      # every init container done (sidecars started)
    ready: bool = False
    reason: str = ""               # e.g. a CreateContainerConfigError's, while Pending
    message: str = ""
    containers: list = field(default_factory=list)       # ContainerState, main
    init_containers: list = field(default_factory=list)  # ContainerState, init and sidecars
    _transitions: dict = field(default_factory=dict)     # condition type -> (status, time)

    def _condition(self, ctype: str, ok: bool, reason: str = "") -> dict:
        status = "True" if ok else "False"
        prev = self._transitions.get(ctype)
        if prev is None or prev[0] != status:
            self._transitions[ctype] = (status, now_rfc3339())
        c = {"type": ctype, "status": status, "lastProbeTime": None,
             "lastTransitionTime": self._transitions[ctype][1]}
        if reason:
            c["reason"] = reason
        return c

    def status(self) -> dict:
        terminal = self.phase in ("Succeeded", "Failed")
        done = "PodCompleted" if terminal else ""
        not_ready = done or ("" if self.ready else "ContainersNotReady")
        conds = [
            self._condition("PodReadyToStartContainers", self.sandbox and not terminal),
            self._condition("Initialized", self.initialized or terminal, "" if self.initialized or terminal
                            else "ContainersNotInitialized"),
            self._condition("Ready", self.ready and not terminal, "" if self.ready and not terminal else not_ready),
            self._condition("ContainersReady", self.ready and not terminal,
                            "" if self.ready and not terminal else not_ready),
        ]
        st = {"phase": self.phase, "conditions": conds, "hostIP": self.host_ip,
              "hostIPs": [{"ip": self.host_ip}],
              "containerStatuses": [_container_status(c, self.uid) for c in self.containers]}
        if self.init_containers:
            st["initContainerStatuses"] = [_container_status(c, self.uid) for c in self.init_containers]
        if self.pod_ip:
            st["podIP"] = self.pod_ip
            st["podIPs"] = [{"ip": self.pod_ip}]
        if self.start_time:
            st["startTime"] = self.start_time
        if self.reason:
            st["reason"], st["message"] = self.reason, self.message
        return st
