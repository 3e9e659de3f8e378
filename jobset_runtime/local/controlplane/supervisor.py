"""The supervisor of one cluster: starts etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, the JobSet CRD, the JobSet manager and its webhook configurations, then
the node agent, each once the previous one answers; watches them; stops them in reverse
order and removes the state directory.

    python -m jobset_runtime.local.controlplane.supervisor serve STATE PORT NODES LABELS AGENT_ARGS

(what `jobset-runtime local cluster up` starts in its own session).  Every child gets
PR_SET_PDEATHSIG, so a SIGKILLed supervisor takes them with it.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from ... import contract
from ...addresses import free_port
from ...errors import ConfigError, JobSetRuntimeError
from . import binaries, certs, components, kubeconfig
from .components import Layout, Ports

CRD_NAME = "jobsets.jobset.x-k8s.io"
START_TIMEOUT = 120.0   # per component: a loaded 2-core machine starts kube-apiserver in ~20 s
STOP_GRACE = 10.0
SUPERVISOR_LOG = "supervisor.log"
_PR_SET_PDEATHSIG = 1


class StartError(JobSetRuntimeError):
    """A component did not come up: the message names it and its log."""


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def port_free(port: int) -> bool:
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


class Supervisor:
    def __init__(self, lay: Layout, bin_dir: Path, port: int, nodes: int, node_labels: list[str],
                 domain: str = contract.DEFAULT_CLUSTER_DOMAIN, out=sys.stderr, agent_args: list | None = None):
        self.lay, self.bin_dir, self.domain, self.out = lay, bin_dir, domain, out
        self.port, self.nodes, self.node_labels = port, nodes, node_labels
        self.agent_args = agent_args or []
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.ports: Ports | None = None
        self._lock = None
        self._t0 = time.monotonic()

    def say(self, msg: str) -> None:
        print(f"[{time.monotonic() - self._t0:6.1f}s] {msg}", file=self.out, flush=True)

    # --- set-up ----------------------------------------------------------------------------
    def prepare(self) -> None:
        lay = self.lay
        lay.root.mkdir(parents=True, exist_ok=True)
        self._lock = open(lay.lock, "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"--state-dir {lay.root}: a cluster is already running there "
                              "(`jobset-runtime local cluster status`)")
        if not port_free(self.port):
            raise ConfigError(f"port {self.port} on 127.0.0.1 is in use: stop what listens there or choose "
                              "another with --port")
        for d in (lay.pki, lay.webhook_certs, lay.logs, lay.pods):
            d.mkdir(parents=True, exist_ok=True)
        first = self.port
        while first <= self.port < first + 4:  # four in a row on 127.0.0.1, none the API server's
            first = free_port("127.0.0.1", count=4)
        self.ports = Ports(apiserver=self.port, etcd_client=first, etcd_peer=first + 1,
                           webhook=first + 2, jobset_health=first + 3)
        self._write_pki()
        lay.jobset_config.write_text(components.jobset_config(lay, self.ports))
        self._record()

    def _write_pki(self) -> None:
        lay, w = self.lay, certs.write
        ca = certs.make_ca("jobset-runtime-ca")
        dns, ips = certs.apiserver_names(components.SERVICE_IP, self.domain)
        api = certs.issue(ca, "kube-apiserver", dns=dns, ips=ips, server=True)
        admin = certs.issue(ca, "jobset-runtime-admin", org="system:masters", client=True)
        etcd = certs.issue(ca, "etcd", dns=("localhost",), ips=("127.0.0.1",), server=True, client=True)
        etcd_client = certs.issue(ca, "kube-apiserver-etcd-client", client=True)
        kubelet = certs.issue(ca, "jobset-runtime-node", dns=("localhost",), ips=("127.0.0.1",), server=True)
        kubelet_client = certs.issue(ca, "kube-apiserver-kubelet-client", org="system:masters", client=True)
        sa_key, sa_pub = certs.service_account_keys()
        wca = certs.make_ca("jobset-runtime-webhook-ca")
        wh = certs.issue(wca, "jobset-webhook", dns=("localhost",), ips=("127.0.0.1",), server=True)
        w(lay.pem("ca.crt"), ca.cert_pem)
        w(lay.pem("ca.key"), ca.key_pem, private=True)
        w(lay.pem("apiserver.crt"), api.cert_pem)
        w(lay.pem("apiserver.key"), api.key_pem, private=True)
        w(lay.pem("kubelet.crt"), kubelet.cert_pem)
        w(lay.pem("kubelet.key"), kubelet.key_pem, private=True)
        w(lay.pem("apiserver-kubelet-client.crt"), kubelet_client.cert_pem)
        w(lay.pem("apiserver-kubelet-client.key"), kubelet_client.key_pem, private=True)
        w(lay.pem("etcd.crt"), etcd.cert_pem)
        w(lay.pem("etcd.key"), etcd.key_pem, private=True)
        w(lay.pem("etcd-client.crt"), etcd_client.cert_pem)
        w(lay.pem("etcd-client.key"), etcd_client.key_pem, private=True)
        w(lay.pem("sa.key"), sa_key, private=True)
        w(lay.pem("sa.pub"), sa_pub)
        w(lay.pem("webhook-ca.crt"), wca.cert_pem)
        w(str(lay.webhook_certs / "tls.crt"), wh.cert_pem)
        w(str(lay.webhook_certs / "tls.key"), wh.key_pem, private=True)
        certs.write(str(lay.kubeconfig), kubeconfig.render(self.server, ca.cert_pem, admin.cert_pem,
                                                           admin.key_pem).encode(), private=True)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _record(self, ready: bool = False) -> None:
        info = {"versions": contract.CONTROL_PLANE_VERSIONS, "binaries": str(self.bin_dir),
                "supervisor": os.getpid(), "server": self.server, "kubeconfig": str(self.lay.kubeconfig),
                "ports": vars(self.ports) if self.ports else {}, "nodes": self.nodes, "ready": ready,
                "processes": {name: p.pid for name, p in self.procs}}
        tmp = self.lay.info.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=1) + "\n")
        os.replace(tmp, self.lay.info)

    def _spawn(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.lay.logs / f"{name}.log", "ab")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             preexec_fn=_die_with_parent, env=env, cwd=str(self.lay.root))
        log.close()
        self.procs.append((name, p))
        self._record()
        return p

    def _wait(self, name: str, check, timeout: float = START_TIMEOUT) -> None:
        p = dict(self.procs).get(name)
        deadline = time.monotonic() + timeout
        while True:
            if p is not None and p.poll() is not None:
                raise StartError(f"{name} exited with {p.returncode} while starting; its log: "
                                 f"{self.lay.logs / (name + '.log')}\n{tail(self.lay.logs / (name + '.log'))}")
            try:
                if check():
                    return
            except (OSError, ValueError, subprocess.SubprocessError):
                pass
            if time.monotonic() > deadline:
                raise StartError(f"{name} did not become ready within {timeout:.0f} s; its log: "
                                 f"{self.lay.logs / (name + '.log')}\n{tail(self.lay.logs / (name + '.log'))}")
            time.sleep(0.2)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([str(self.bin_dir / "kubectl"), f"--kubeconfig={self.lay.kubeconfig}", *args],
                           input=input, capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise StartError(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
        return r

    def _https_ok(self, url: str, client_cert: str = "") -> bool:
        with urllib.request.urlopen(url, context=self._tls(client_cert), timeout=2) as r:
            return r.status == 200

    def _tls(self, client_cert: str = "") -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.lay.pem("ca.crt"))
        if client_cert:
            ctx.load_cert_chain(self.lay.pem(f"{client_cert}.crt"), self.lay.pem(f"{client_cert}.key"))
        return ctx

    def start(self) -> None:
        lay, b, p = self.lay, self.bin_dir, self.ports
        self.say(f"state {lay.root}, binaries {b}")
        self._spawn("etcd", components.etcd(b, lay, p))
        self._wait("etcd", lambda: json.loads(urllib.request.urlopen(
            f"https://127.0.0.1:{p.etcd_client}/health", context=self._tls("etcd-client"),
            timeout=2).read()).get("health") == "true")
        self.say(f"etcd ready on 127.0.0.1:{p.etcd_client}")
        self._spawn("kube-apiserver", components.apiserver(b, lay, p, self.domain))
        self._wait("kube-apiserver", lambda: self._https_ok(f"{self.server}/readyz"))
        self.say(f"kube-apiserver ready on {self.server}")
        self._spawn("kube-controller-manager", components.controller_manager(b, lay))
        self._spawn("kube-scheduler", components.scheduler(b, lay))
        self.kubectl("apply", "--server-side", "-f", str(b / contract.JOBSET_CRD_FILE))
        self._wait("kube-apiserver", lambda: self.kubectl(
            "wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=5s", check=False).returncode == 0)
        self.say("JobSet CRD established")
        self._spawn("jobset-manager", components.jobset_manager(b, lay))
        self._wait("jobset-manager", lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{p.jobset_health}/readyz", timeout=2).status == 200)
        hooks = components.webhook_configurations((b / contract.JOBSET_WEBHOOKS_FILE).read_text(), p.webhook,
                                                  Path(lay.pem("webhook-ca.crt")).read_bytes())
        lay.webhooks.write_text("---\n".join(json.dumps(h) + "\n" for h in hooks))
        self.kubectl("apply", "-f", str(lay.webhooks))
        # The manager reports ready once its webhook server listens, but registers the
        # handlers a moment later (main.go setupControllers): until then a call is a 404.
        self._wait("jobset-manager", self._webhooks_answer)
        self.say(f"jobset-manager ready, webhooks on 127.0.0.1:{p.webhook}")
        for name in ("kube-controller-manager", "kube-scheduler"):
            self._wait(name, lambda: True)  # still running
        if self.nodes:
            argv = [sys.executable, "-m", "jobset_runtime.local.controlplane.node",
                    f"--kubeconfig={lay.kubeconfig}", f"--state-dir={lay.root}", f"--nodes={self.nodes}",
                    *[f"--node-labels={x}" for x in self.node_labels], *self.agent_args]
            self._spawn("node-agent", argv)
            self._wait("node-agent", self._nodes_ready)
            self.say(f"{self.nodes} node(s) Ready")
        self._record(ready=True)
        lay.ready.write_text(str(os.getpid()))

    def _webhooks_answer(self) -> bool:
        """A server-side dry run of a small JobSet goes through both JobSet webhooks."""
        probe = {"apiVersion": contract.JOBSET_API_VERSION, "kind": contract.JOBSET_KIND,
                 "metadata": {"name": "webhook-probe", "namespace": "default"},
                 "spec": {"replicatedJobs": [{"name": "w", "replicas": 1, "template": {"spec": {"template": {
                     "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "probe"}]}}}}}]}}
        return self.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(probe),
                            check=False).returncode == 0

    def _nodes_ready(self) -> bool:
        r = self.kubectl("get", "nodes", "-o", "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")]"
                         ".status}{\"\\n\"}{end}", check=False)
        return r.returncode == 0 and r.stdout.split().count("True") >= self.nodes

    def watch(self) -> str:
        """Until a signal: a component that dies is reported and brings the cluster down."""
        while True:
            for name, p in self.procs:
                if p.poll() is not None:
                    return f"{name} exited with {p.returncode}; its log: {self.lay.logs / (name + '.log')}"
            time.sleep(0.5)

    def stop(self) -> None:
        """Reverse order: the node agent first (it stops its pods), etcd last."""
        for name, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=45.0 if name == "node-agent" else STOP_GRACE)
                except subprocess.TimeoutExpired:
                    self.say(f"{name} did not stop within its grace period: killing it")
                    p.kill()
                    p.wait()
        self.procs.clear()

    def remove(self, keep_logs: bool) -> None:
        """Everything goes; after a failure the logs stay for the user (the next up or down removes them)."""
        from ..pods import reap_stale

        reap_stale()
        for p in self.lay.root.iterdir():
            if keep_logs and p.name == "logs":
                continue
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        if not keep_logs:
            self.lay.root.rmdir()


def tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + x for x in lines[-n:])


def serve(lay: Layout, port: int, nodes: int, node_labels: list[str], agent_args: list | None = None) -> int:
    """The supervisor's life: start, watch, stop, remove. SIGTERM/SIGINT/SIGHUP stop it."""
    bin_dir = binaries.locate()
    sup = Supervisor(lay, bin_dir, port, nodes, node_labels, agent_args=agent_args)

    def stop(signum, frame):
        raise KeyboardInterrupt

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, stop)
    rc = 0
    try:
        try:
            sup.prepare()
            sup.start()
            sup.say("cluster ready")
            why = sup.watch()
            sup.say(f"error: {why}")
            rc = 1
        except KeyboardInterrupt:
            sup.say("stopping")
        except JobSetRuntimeError as e:
            sup.say(f"error: {e}")
            rc = e.exit_code
    finally:
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        sup.stop()
        if sup._lock is not None:  # only the holder of the lock removes the directory
            sup.remove(keep_logs=rc != 0)
    return rc


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "serve":
        sys.exit(serve(Layout(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5]),
                       json.loads(sys.argv[6])))
    print("usage: jobset-runtime local cluster up|down|status|env", file=sys.stderr)
    sys.exit(contract.EXIT_CONFIG)
