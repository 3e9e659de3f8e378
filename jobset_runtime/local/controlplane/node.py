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

from ... import contract
from ...errors import ConfigError
from .. import kubelet
from ..podlifecycle import CRASH_BACKOFF_INITIAL, TERMINAL, Container
from ..runner import Runner
from .nodeapi import NodeApi
from .podworkers import NodeKubelet, NodePod


class NodeRuntime(Runner):
    def __init__(self, api: NodeApi, *, run_dir: str, mode: str, out=None, crash_backoff: float = CRASH_BACKOFF_INITIAL,
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

    def prepare(self, pod: NodePod) -> None:
        """The kubelet's volume and /etc set-up from the live Pod, then its containers."""
        facts = self._facts(pod)
        try:
            self._write_volumes(pod, facts)
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

    def container_log(self, namespace: str, name: str, container: str):
        """(log path, still running?) for kubeletapi.py, from the HTTP server's thread (reads only)."""
        pod = self.ctl.pods.get((namespace, name))
        if pod is None or container not in {c.name for c in pod.all_containers()}:
            return None
        multi = len(pod.containers) > 1  # as Runner._spawn names the files
        path = os.path.join(self.run_dir, f"{pod.name}.{container}.log" if multi else f"{pod.name}.log")
        return path, lambda: not pod.gone and pod.phase not in TERMINAL

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
    p.add_argument("--pods-dir", default=None, help="pod logs and volumes go here instead (`local run`'s run dir)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--node-name-prefix", default="jobset-runtime-")
    p.add_argument("--node-labels", action="append", default=[], metavar="K=V[,K=V]")
    p.add_argument("--node-capacity", action="append", default=[], metavar="RESOURCE=QUANTITY")
    p.add_argument("--mode", choices=("auto", "netns"), default="auto")
    p.add_argument("--workdir", default=None, help="containers without workingDir start here")
    p.add_argument("--crash-backoff", type=float, default=CRASH_BACKOFF_INITIAL)
    p.add_argument("--dns-delay", type=float, default=0.0, metavar="S", help="new DNS names become visible S s late")
    a = p.parse_args(argv)
    try:
        from ..cli import NEEDS_ROOT, choose_mode

        mode = choose_mode(a.mode)
        if mode != "netns":
            raise ConfigError(NEEDS_ROOT)
        names = [f"{a.node_name_prefix}{i}" for i in range(a.nodes)]
        api = NodeApi(a.kubeconfig, names, parse_labels(a.node_labels, a.nodes), parse_capacity(a.node_capacity))
        pki = os.path.join(a.state_dir, "pki")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if a.workdir:
        os.chdir(a.workdir)
    rt = NodeRuntime(api, run_dir=os.path.abspath(a.pods_dir or os.path.join(a.state_dir, "pods")), mode=mode,
                     crash_backoff=a.crash_backoff, dns_delay=a.dns_delay)
    def post_pod(kind, obj, node, objects):
        rt.post(lambda: rt.ctl.pod_event(kind, obj, node, objects))

    kubelet_api = None
    if os.path.exists(os.path.join(pki, "kubelet.crt")):  # a cluster of ours: `kubectl logs` works
        from .kubeletapi import KubeletServer

        kubelet_api = KubeletServer(rt.container_log, os.path.join(pki, "kubelet.crt"),
                                    os.path.join(pki, "kubelet.key"), os.path.join(pki, "ca.crt")).start()
        api.kubelet_port = kubelet_api.port

    def ready():
        api.register()
        api.start_threads(post_pod)
        rt.event(f"nodes {', '.join(names)} registered")

    try:
        return rt.serve(ready)
    finally:
        if kubelet_api is not None:
            kubelet_api.stop()
        api.stop()
        api.unregister()


if __name__ == "__main__":
    sys.exit(main())
