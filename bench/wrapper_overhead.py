"""What `jobset-run` adds in front of a command, in a pod set up as the generated manifests set it up.

The pods come from `jobset_runtime.manifests.jax` (2 hosts): each container's env is built
from the manifest the way the kubelet builds it (fieldRefs included), its downward-API and
Secret volumes are written out as files, and its command is the manifest's own
(`jobset-run --wait coordinator [--group on] -- true`).  The coordinator's name is answered
by dnsmasq, the pod's nameserver in /etc/resolv.conf: the script runs itself in a network
and mount namespace of its own (root), where dnsmasq listens on 127.0.0.1:53 and a
resolv.conf as the kubelet writes it is mounted over /etc/resolv.conf, so that the wrapper
and the group channel resolve names as in a pod.  Two lines, each against `true`, all runs
interleaved so machine noise hits both alike:

  default: the manifest without fail-fast: downward-API files, DNS wait for the coordinator;
  group:   the default manifest (group token mounted): both pods' wrappers started together,
           the coordinator's hosting the channel; timed is the other pod's wrapper, which
           joins, waits for the gang start, runs `true` and leaves.

Figure: added = median(wrapper) - median(`true`), with the wrapper's p90 (goal < 100 ms added).

    sudo python bench/wrapper_overhead.py [--runs 40] [--group-runs 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "peers"), str(Path(__file__).resolve().parent)]

import dnsfixtures  # noqa: E402
from results import Results, Stat  # noqa: E402

from jobset_runtime import contract, jobset, manifests  # noqa: E402
from jobset_runtime.local import kubelet  # noqa: E402

TOKEN = "bench-group-token-0123456789abcdef"


def pod_ip(index: int) -> str:
    return f"127.0.0.{2 + index}"


def pods(tmp: Path, fail_fast: bool) -> list[tuple[list[str], dict]]:
    """(argv, env) of each pod's container, from the generated manifest."""
    docs = manifests.jax(name="bench", image="unused", hosts=2, command=[shutil.which("true")],
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


def timed(argv, env) -> float:
    t = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def timed_pair(coordinator, member) -> float:
    """Both pods' wrappers started together; the member's wall time."""
    c = subprocess.Popen(coordinator[0], env=coordinator[1], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t = time.perf_counter()
    subprocess.run(member[0], env=member[1], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t
    if c.wait(30) != 0:
        raise SystemExit("the coordinator pod's jobset-run failed")
    return elapsed


def record(res: Results, name: str, what: str, wrapped: list[float], bare: list[float]) -> None:
    w, b = Stat.median(wrapped, "s"), Stat.median(bare, "s")
    added = [x - b.value for x in wrapped]
    res.add(name, what, Stat.median(added, "s"), spread=[Stat.p90(added, "s")],
            baseline=b, baseline_what="`true` alone", goal="< 100 ms added" if "group" not in name else "")
    res.add(name + ".total", what.replace("added by", "wall time of") + ", `true` included", w,
            spread=[Stat.p90(wrapped, "s")])


def enter_pod_namespaces(argv: list[str]) -> None:
    """Re-run this script in a network and mount namespace of its own."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        sys.exit("needs root and unshare(1): the pods' resolv.conf is mounted in a namespace of their own")
    os.execvp("unshare", ["unshare", "--net", "--mount", "--propagation", "private",
                          sys.executable, __file__, "--in-namespace", *argv])


def pod_network(tmp: Path) -> None:
    """Loopback up; the kubelet's resolv.conf (nameserver 127.0.0.1) over /etc/resolv.conf."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    conf = tmp / "resolv.conf"
    conf.write_text(kubelet.resolv_conf("default", "127.0.0.1"))
    subprocess.run(["mount", "--bind", str(conf), contract.RESOLV_CONF], check=True)
    # The port a resolv.conf nameserver is asked on; free in this fresh namespace.
    dnsfixtures.free_port = lambda host="127.0.0.1": 53


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--group-runs", type=int, default=20)
    ap.add_argument("--in-namespace", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if dnsfixtures.find_dnsmasq() is None:
        sys.exit("dnsmasq is not installed (Debian: apt-get install dnsmasq-base): the pods' DNS needs it")
    argv = [x for x in sys.argv[1:] if x != "--in-namespace"]
    if not a.in_namespace:
        enter_pod_namespaces(argv)
    res = Results(__file__, argv)
    true = shutil.which("true")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pod_network(tmp)
        dm = dnsfixtures.Dnsmasq(tmp, {}).start()
        plain = pods(tmp / "plain", False)
        grouped = pods(tmp / "group", True)
        # Every pod's own name, from its hostname and the JobSet's subdomain.
        dm.update({f"{e['HOSTNAME']}.bench.default.svc.cluster.local": pod_ip(i) for i, (_, e) in enumerate(plain)})
        argv, env = plain[1]
        print(f"default: {' '.join(argv)}", flush=True)
        for _ in range(3):  # the page cache, dnsmasq's first answers
            timed(argv, env)
        bare, wrapped = [], []
        for _ in range(a.runs):
            bare.append(timed([true], env))
            wrapped.append(timed(argv, env))
        record(res, "wrapper.default", "added by `jobset-run -- true` in a generated pod (downward-API files, "
               "DNS wait for the coordinator against dnsmasq), over `true`", wrapped, bare)
        print(f"group: {' '.join(grouped[1][0])}", flush=True)
        gbare, gwrapped = [], []
        timed_pair(grouped[0], grouped[1])
        for _ in range(a.group_runs):
            gbare.append(timed([true], env))
            gwrapped.append(timed_pair(grouped[0], grouped[1]))
        dm.stop()
        record(res, "wrapper.group", "added by `jobset-run --group on -- true` with the group token mounted "
               "(2 pods started together; the non-coordinator pod's wrapper: join, gang start, leave), over `true`",
               gwrapped, gbare)
    res.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
