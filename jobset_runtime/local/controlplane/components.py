"""The command line of every control-plane process, and the JobSet manager's configuration.

Pure functions of the state directory's layout and the ports: cluster.py runs them.
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # the `kubernetes` Service: the first address of the range

# kube-controller-manager's controllers: what JobSets need (job, endpointslice,
# garbage collector, namespace, pod GC, ttl-after-finished), the service-account
# controller for the `default` ServiceAccount every namespace has, and node
# lifecycle, which taints a Node whose agent stopped renewing its lease.
CONTROLLERS = ("job-controller", "endpointslice-controller", "endpointslice-mirroring-controller",
               "garbage-collector-controller", "namespace-controller", "serviceaccount-controller",
               "pod-garbage-collector-controller", "ttl-after-finished-controller",
               "node-lifecycle-controller", "replicaset-controller", "deployment-controller")


@dataclass
class Layout:
    """Where each file of one cluster lives inside its state directory."""
    root: Path

    def __post_init__(self):
        self.root = Path(self.root)

    @property
    def pki(self) -> Path: return self.root / "pki"
    @property
    def webhook_certs(self) -> Path: return self.root / "pki" / "webhook"
    @property
    def etcd_data(self) -> Path: return self.root / "etcd"
    @property
    def logs(self) -> Path: return self.root / "logs"
    @property
    def pods(self) -> Path: return self.root / "pods"
    @property
    def kubeconfig(self) -> Path: return self.root / "kubeconfig"
    @property
    def jobset_config(self) -> Path: return self.root / "jobset-config.yaml"
    @property
    def webhooks(self) -> Path: return self.root / "webhooks.yaml"
    @property
    def info(self) -> Path: return self.root / "cluster.json"
    @property
    def lock(self) -> Path: return self.root / "lock"
    @property
    def ready(self) -> Path: return self.root / "ready"

    def pem(self, name: str) -> str:
        return str(self.pki / name)


@dataclass
class Ports:
    apiserver: int
    etcd_client: int
    etcd_peer: int
    webhook: int
    jobset_health: int
    dns: int = 0
    extra: dict = field(default_factory=dict)


def etcd(bin_dir: Path, lay: Layout, p: Ports) -> list[str]:
    """TLS with client certificates on both listeners: another user of this machine
    cannot read or write the cluster's state through loopback."""
    client, peer = f"https://127.0.0.1:{p.etcd_client}", f"https://127.0.0.1:{p.etcd_peer}"
    tls = [f"--cert-file={lay.pem('etcd.crt')}", f"--key-file={lay.pem('etcd.key')}",
           f"--trusted-ca-file={lay.pem('ca.crt')}", "--client-cert-auth",
           f"--peer-cert-file={lay.pem('etcd.crt')}", f"--peer-key-file={lay.pem('etcd.key')}",
           f"--peer-trusted-ca-file={lay.pem('ca.crt')}", "--peer-client-cert-auth"]
    return [str(bin_dir / "etcd"), "--name=default", f"--data-dir={lay.etcd_data}", *tls,
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}", "--initial-cluster-state=new",
            # A throwaway cluster: its data dies with it, so fsync buys nothing.
            "--unsafe-no-fsync", "--log-level=warn"]


def apiserver(bin_dir: Path, lay: Layout, p: Ports, domain: str) -> list[str]:
    return [str(bin_dir / "kube-apiserver"),
            f"--etcd-servers=https://127.0.0.1:{p.etcd_client}", f"--etcd-cafile={lay.pem('ca.crt')}",
            f"--etcd-certfile={lay.pem('etcd-client.crt')}", f"--etcd-keyfile={lay.pem('etcd-client.key')}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={p.apiserver}",
            f"--tls-cert-file={lay.pem('apiserver.crt')}", f"--tls-private-key-file={lay.pem('apiserver.key')}",
            f"--client-ca-file={lay.pem('ca.crt')}",
            f"--service-account-key-file={lay.pem('sa.pub')}",
            f"--service-account-signing-key-file={lay.pem('sa.key')}",
            f"--service-account-issuer=https://kubernetes.default.svc.{domain}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # `kubectl logs`: to the node agent's kubelet endpoint (kubeletapi.py), both ways TLS.
            f"--kubelet-client-certificate={lay.pem('apiserver-kubelet-client.crt')}",
            f"--kubelet-client-key={lay.pem('apiserver-kubelet-client.key')}",
            f"--kubelet-certificate-authority={lay.pem('ca.crt')}", "--kubelet-preferred-address-types=InternalIP",
            "--authorization-mode=RBAC",
            # No kubelet mounts a projected service-account token here: the node agent
            # runs host commands, which do not call the API (docs/control-plane.md).
            "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true", "--profiling=false", "--enable-priority-and-fairness=false",
            f"--cert-dir={lay.pki}"]


def controller_manager(bin_dir: Path, lay: Layout) -> list[str]:
    return [str(bin_dir / "kube-controller-manager"), f"--kubeconfig={lay.kubeconfig}",
            f"--authentication-kubeconfig={lay.kubeconfig}", f"--authorization-kubeconfig={lay.kubeconfig}",
            "--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false",
            f"--controllers={','.join(CONTROLLERS)}", f"--root-ca-file={lay.pem('ca.crt')}",
            f"--service-account-private-key-file={lay.pem('sa.key')}",
            "--kube-api-qps=200", "--kube-api-burst=400", "--concurrent-job-syncs=20",
            # A pod of a NotReady node is deleted after the toleration's 300 s; the node
            # agent keeps Ready, so only a dead agent trips it.
            "--node-monitor-grace-period=40s"]


def scheduler(bin_dir: Path, lay: Layout) -> list[str]:
    return [str(bin_dir / "kube-scheduler"), f"--kubeconfig={lay.kubeconfig}",
            f"--authentication-kubeconfig={lay.kubeconfig}", f"--authorization-kubeconfig={lay.kubeconfig}",
            "--bind-address=127.0.0.1", "--secure-port=0", "--leader-elect=false",
            "--kube-api-qps=200", "--kube-api-burst=400"]


def jobset_manager(bin_dir: Path, lay: Layout) -> list[str]:
    return [str(bin_dir / "jobset-manager"), f"--config={lay.jobset_config}", f"--kubeconfig={lay.kubeconfig}",
            "--zap-log-level=info"]


def jobset_config(lay: Layout, p: Ports) -> str:
    """api/config/v1alpha1 Configuration: our own certificates instead of the manager's
    internal cert rotation (which writes a Secret and patches in-cluster webhook
    configurations by Service name), webhooks and health on loopback, no metrics."""
    return yaml.safe_dump({
        "apiVersion": "config.jobset.x-k8s.io/v1alpha1", "kind": "Configuration",
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "webhook": {"host": "127.0.0.1", "port": p.webhook, "certDir": str(lay.webhook_certs)},
        "metrics": {"bindAddress": "0"},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{p.jobset_health}"},
        "clientConnection": {"qps": 500, "burst": 500},
    }, sort_keys=False)


# config/components/webhook/patches/{mutating,validating}-patch.yaml in sigs.k8s.io/jobset:
# kustomize gives the pod webhooks this objectSelector, so only JobSet pods go through them.
_JOBSET_POD_SELECTOR = {"matchExpressions": [{"key": "jobset.sigs.k8s.io/jobset-name", "operator": "Exists"}]}


def webhook_configurations(manifests: str, port: int, ca_pem: bytes) -> list[dict]:
    """The JobSet module's webhook configurations with each Service clientConfig turned
    into a `url` on loopback plus our caBundle, the pod webhooks given their objectSelector."""
    out = []
    for doc in yaml.safe_load_all(manifests):
        if not doc:
            continue
        doc["metadata"] = {"name": f"jobset-{doc['metadata']['name']}"}
        for wh in doc.get("webhooks") or []:
            path = wh["clientConfig"]["service"]["path"]
            wh["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}",
                                  "caBundle": base64.b64encode(ca_pem).decode()}
            if any("pods" in (r.get("resources") or []) for r in wh.get("rules") or []):
                wh["objectSelector"] = _JOBSET_POD_SELECTOR
            wh.setdefault("timeoutSeconds", 10)
        out.append(doc)
    return out
