"""Pods as the generated manifests set them up, for the benchmarks that run real `jobset-run`s.

Each container's env is built from the manifest the way the kubelet builds it (fieldRefs
included), its downward-API and Secret volumes are written out as files, and its command is
the manifest's own.  Names are answered by dnsmasq as the pods' nameserver in
/etc/resolv.conf: the script runs itself in a network and mount namespace of its own
(root), where dnsmasq listens on 127.0.0.1:53 and a resolv.conf as the kubelet writes it is
mounted over /etc/resolv.conf, so that the wrapper and the group channel resolve names as
in a pod.  Pod i has the IP 127.0.0.(2 + i).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "peers")]

import dnsfixtures  # noqa: E402

from jobset_runtime import contract, jobset, manifests  # noqa: E402
from jobset_runtime.local import kubelet  # noqa: E402

TOKEN = "bench-group-token-0123456789abcdef"


def pod_ip(index: int) -> str:
    return f"127.0.0.{2 + index}"


def pods(tmp: Path, fail_fast: bool, hosts: int = 2, command: list[str] | None = None) -> list[tuple[list[str], dict]]:
    """(argv, env) of each pod's container, from the generated manifest."""
    docs = manifests.jax(name="bench", image="unused", hosts=hosts, command=command or [shutil.which("true")],
                         fail_fast=fail_fast, group_token=TOKEN)
    js = docs[-1]
    objects = {(d["kind"], d["metadata"]["name"]): d for d in docs[:-1]}
    rjob = js["spec"]["replicatedJobs"][0]
    spec = rjob["template"]["spec"]["template"]["spec"]
    container = spec["containers"][0]
    out = []
    for ref in jobset.all_pods(js):
        labels, annotations = jobset.child_pod_metadata(js, ref.replicated_job, ref.job_index, ref.pod_index)
        host = jobset.pod_hostname("bench", ref.replicated_job, ref.job_index, ref.pod_index)
        facts = kubelet.PodFacts(
            name=jobset.pod_name(js, ref.replicated_job, ref.job_index, ref.pod_index), namespace="default", uid="",
            labels=labels, annotations=annotations, hostname=host, subdomain=jobset.subdomain(js),
            pod_ip=pod_ip(ref.pod_index), host_ip="127.0.0.1", node_name="node", objects=objects)
        env = kubelet.container_env(facts, container, extra={"HOSTNAME": host})
        mounts = {}
        for vol in spec.get("volumes") or []:
            files = kubelet.volume_files(facts, vol) or {}
            d = tmp / host / vol["name"]
            d.mkdir(parents=True)
            for rel, content in files.items():
                (d / rel).write_text(content)
            mounts[vol["name"]] = d
        # The mount paths of the manifest, redirected into this pod's directory.
        for m in container["volumeMounts"]:
            if m["mountPath"] == contract.PODINFO_DIR:
                env[contract.PODINFO_ENV] = str(mounts[m["name"]])
            elif m["mountPath"] == contract.GROUP_TOKEN_DIR:
                env[contract.GROUP_TOKEN_FILE_ENV] = str(mounts[m["name"]] / contract.GROUP_TOKEN_KEY)
        env.update({contract.TERMINATION_LOG_ENV: str(tmp / host / "termlog"),
                    "PATH": os.environ["PATH"]})
        argv = kubelet.container_argv(container, env)
        argv[0] = str(Path(sys.executable).parent / argv[0])
        out.append((argv, env))
    return out


def enter_pod_namespaces(script: str, argv: list[str]) -> None:
    """Re-run this script in a network and mount namespace of its own."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        sys.exit("needs root and unshare(1): the pods' resolv.conf is mounted in a namespace of their own")
    os.execvp("unshare", ["unshare", "--net", "--mount", "--propagation", "private",
                          sys.executable, script, "--in-namespace", *argv])


def pod_network(tmp: Path) -> None:
    """Loopback up; the kubelet's resolv.conf (nameserver 127.0.0.1) over /etc/resolv.conf."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    conf = tmp / "resolv.conf"
    conf.write_text(kubelet.resolv_conf("default", "127.0.0.1"))
    subprocess.run(["mount", "--bind", str(conf), contract.RESOLV_CONF], check=True)


def dns_names(pod_list) -> dict[str, str]:
    """Every pod's FQDN (hostname.subdomain.namespace.svc) -> its IP."""
    return {f"{env['HOSTNAME']}.bench.default.svc.cluster.local": pod_ip(i) for i, (_, env) in enumerate(pod_list)}


def start_dns(tmp: Path, names: dict[str, str]):
    pod_network(tmp)
    # On the port a resolv.conf nameserver is asked on; free in this fresh namespace.
    return dnsfixtures.Dnsmasq(tmp, names, port=53).start()


def have_dnsmasq() -> bool:
    return dnsfixtures.find_dnsmasq() is not None
