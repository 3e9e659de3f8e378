"""The node agent's side of the API, in threads: Node registration, Leases and the Ready
heartbeat, a watch of the pods bound to each node (with the Secrets and ConfigMaps they
name), and one writer of pod statuses and deletions (latest wins per pod).  Through
lightkube (the `cluster` extra)."""

from __future__ import annotations

import os
import sys
import threading
import time

from ... import contract
from . import podstatus
from .podworkers import referenced_objects

LEASE_SECONDS = 40         # the kubelet's default nodeLeaseDurationSeconds
HEARTBEAT_SECONDS = 10.0   # lease renewals and Ready heartbeats (kubelet: 10 s)


class NodeApi:
    def __init__(self, kubeconfig: str, nodes: list[str], labels: list[dict], capacity: dict, kubelet_port: int = 0):
        from lightkube import Client
        from lightkube.config.kubeconfig import KubeConfig

        self.config = KubeConfig.from_file(kubeconfig)
        self.client = Client(self.config, field_manager="jobset-runtime-node")
        self.nodes, self.labels, self.capacity = nodes, labels, capacity
        self.kubelet_port = kubelet_port  # kubeletapi.py's, where the API server sends `kubectl logs`
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
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
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
