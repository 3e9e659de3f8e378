"""`jobset-runtime local run FILE.yaml`: run a JobSet on this machine.

Exit codes: 0 the JobSet Completed, 1 it Failed, 2 bad input, 124 --timeout
reached, 130 interrupted (Ctrl-C / SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from .. import contract
from ..errors import ConfigError, JobSetRuntimeError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jobset-runtime local", description="Run a JobSet on this machine, "
                                "each pod as processes in its own network, UTS and mount namespaces.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a JobSet file until it Completes or Fails")
    r.add_argument("file", help="YAML file with one JobSet (and the Secrets/ConfigMaps it uses)")
    r.add_argument("--timeout", type=float, default=None, metavar="S", help="stop everything after S seconds (exit 124)")
    r.add_argument("--dns-delay", type=float, default=0.0, metavar="S",
                   help="DNS records of new pods become visible S seconds late (as cluster DNS often does)")
    r.add_argument("--skew", action="append", default=[], metavar="POD=SECONDS",
                   help="start pods matching POD (hostname or glob, e.g. demo-workers-0-1 or '*-workers-*') late")
    r.add_argument("--run-dir", default=None, metavar="DIR", help="where pod logs and volumes go "
                   "(default ./runs/<jobset>-<timestamp>)")
    r.add_argument("--mode", choices=("auto", "netns", "rootless", "loopback"), default="auto",
                   help="netns: a namespace per pod (root); rootless: the same inside a user namespace "
                   "(not root); loopback: plain processes on 127.x (fallback); auto: the first that works here")
    r.add_argument("--ip-family", choices=("ipv4", "ipv6", "dual"), default="ipv4",
                   help="the pods' addresses: IPv4, IPv6 only, or dual-stack with IPv6 first (netns and rootless modes)")
    r.add_argument("--crash-backoff", type=float, default=None, metavar="S",
                   help="first delay before the kubelet-style in-place restart (default 10, as the kubelet)")
    r.add_argument("--pod-backoff", type=float, default=None, metavar="S",
                   help="first delay before a failed pod is re-created (default 10, as the Job controller)")
    r.add_argument("--mtu", type=int, default=None, metavar="BYTES",
                   help="MTU of every pod's interface (as a CNI with an overlay sets it; default 1500)")
    r.add_argument("--backend", choices=("embedded", "cluster"), default="embedded",
                   help="embedded: this project's own JobSet, Job and kubelet model (fast, no binaries); "
                   "cluster: the real kube-apiserver, controllers, scheduler and JobSet manager "
                   "(docs/control-plane.md)")
    r.add_argument("--kubeconfig", default=None, metavar="FILE",
                   help="--backend cluster: use this running cluster instead of starting one")
    # Set by run_rootless on the command it runs inside the user namespace it makes.
    r.add_argument("--userns-state", default=None, help=argparse.SUPPRESS)
    c = sub.add_parser("cluster", help="the real Kubernetes control plane on this machine, this machine as its nodes")
    csub = c.add_subparsers(dest="action", required=True)
    for name, text in (("up", "start etcd, kube-apiserver, controllers, scheduler, JobSet and the node agent"),
                       ("down", "stop everything and remove the state directory"),
                       ("status", "is it running; its processes"), ("env", "print `export KUBECONFIG=...`")):
        a = csub.add_parser(name, help=text)
        a.add_argument("--state-dir", default=None, metavar="DIR",
                       help="the cluster's directory (default ~/.local/state/jobset-runtime/cluster)")
        if name == "up":
            a.add_argument("--port", type=int, default=contract.CLUSTER_API_PORT,
                           help=f"kube-apiserver's port on 127.0.0.1 (default {contract.CLUSTER_API_PORT})")
            a.add_argument("--nodes", type=int, default=1, metavar="N", help="Nodes the agent registers (default 1)")
            a.add_argument("--node-labels", action="append", default=[], metavar="K=V[,K=V]",
                           help="labels for the nodes; repeat to give node i the i-th value (cycled), e.g. "
                           "--node-labels cloud.google.com/gke-nodepool=a --node-labels cloud.google.com/gke-nodepool=b")
            a.add_argument("--node-capacity", action="append", default=[], metavar="RESOURCE=QUANTITY",
                           help="an extended resource every node offers, e.g. google.com/tpu=4 (besides this "
                           "machine's cpu and memory)")
            a.add_argument("--dns-delay", type=float, default=0.0, metavar="S",
                           help="new cluster DNS names become visible S seconds late (as `local run --dns-delay`)")
            a.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops the cluster")
            a.add_argument("--timeout", type=float, default=300.0, metavar="S", help="give up starting after S seconds")
            a.add_argument("--mode", choices=("auto", "netns"), default="auto",
                           help="how the node agent runs pods: in network namespaces of their own (root); "
                           "loopback is not available, the API server refuses 127.x pod IPs in EndpointSlices")
    return p


NEEDS_ROOT = ("the cluster's node agent runs pods in network namespaces of their own, which needs root "
              "(loopback mode cannot serve it: the API server refuses 127.x pod IPs in EndpointSlices, so "
              "cluster DNS would never name the pods); run it as root, or use `local run --backend embedded`")


def cluster(args) -> int:
    from pathlib import Path

    from .controlplane import cluster as cl

    state = Path(args.state_dir) if args.state_dir else cl.default_state_dir()
    if args.action == "up":
        if args.nodes < 1:
            raise ConfigError(f"--nodes {args.nodes}: at least 1")
        if not 0 < args.port < 65536:
            raise ConfigError(f"--port {args.port}: not a TCP port")
        if os.geteuid() != 0:
            raise ConfigError(NEEDS_ROOT)
        return cl.up(state, args.port, args.nodes, args.node_labels, args.foreground, args.timeout,
                     agent_args=[f"--mode={args.mode}", f"--workdir={os.getcwd()}", f"--dns-delay={args.dns_delay}",
                                 *[f"--node-capacity={c}" for c in args.node_capacity]])
    return {"down": cl.down, "status": cl.status, "env": cl.env}[args.action](state)


def _parse_skew(items) -> dict:
    out = {}
    for item in items:
        pod, sep, secs = item.rpartition("=")
        try:
            out[pod] = float(secs)
        except ValueError:
            sep = ""
        if not sep or not pod:
            raise ConfigError(f"--skew {item!r}: expected POD=SECONDS, e.g. --skew demo-workers-0-1=5")
    return out


IPV4_MIN_MTU = 68     # RFC 791: every IPv4 link carries 68-byte datagrams unfragmented
IPV6_MIN_MTU = 1280   # RFC 8200, section 5: IPv6 needs at least this on every link
MAX_MTU = 65535


def check_mtu(mtu: int | None, ip_family: str) -> None:
    """ConfigError for an MTU the pods' interfaces cannot have: IPv6's minimum is 1280, and
    Linux refuses an IPv6 address on an interface below it (`ip addr add`: Invalid argument)."""
    if mtu is None:
        return
    if not IPV4_MIN_MTU <= mtu <= MAX_MTU:
        raise ConfigError(f"--mtu {mtu}: an interface MTU is {IPV4_MIN_MTU} to {MAX_MTU} bytes "
                          "(IPv4's minimum to the largest)")
    if ip_family != "ipv4" and mtu < IPV6_MIN_MTU:
        raise ConfigError(f"--mtu {mtu} with --ip-family {ip_family}: IPv6 needs an MTU of at least "
                          f"{IPV6_MIN_MTU} bytes on every link (RFC 8200); use --mtu {IPV6_MIN_MTU} or more, "
                          "or --ip-family ipv4")


def embedded_only(args) -> None:
    """Options the cluster backend's node agent does not take: refused, never silently dropped."""
    given = [f"--ip-family {args.ip_family}"] if args.ip_family != "ipv4" else []
    given += [f"--mtu {args.mtu}"] if args.mtu is not None else []
    if given:
        raise ConfigError(f"{' and '.join(given)}: the cluster backend's node agent runs its pods on IPv4 "
                          "with the kernel's default MTU; drop the option, or use --backend embedded")


def run(args) -> int:
    from . import spec
    from .runner import Runner

    js_raw, objects = spec.read_file(args.file)
    js = spec.apply_defaults(js_raw)
    ignored = spec.notices(js)
    if ignored:
        print(f"notice: no effect on one machine (one node runs every pod): {', '.join(ignored)}", file=sys.stderr)
    skew = _parse_skew(args.skew)
    check_mtu(args.mtu, args.ip_family)
    run_dir = args.run_dir or os.path.join("runs", f"{js['metadata']['name']}-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.userns_state:
        mode = "rootless"
    else:
        mode = choose_mode(args.mode)
        if mode == "loopback" and args.ip_family != "ipv4":
            raise ConfigError(f"--ip-family {args.ip_family} needs pods in network namespaces, which loopback mode "
                              "does not have: run as root (--mode netns) or with --mode rootless")
        if mode == "rootless":
            from .rootless import run_rootless
            return run_rootless(args, os.path.abspath(run_dir))
    runner = Runner(js, objects, run_dir=os.path.abspath(run_dir), mode=mode, dns_delay=args.dns_delay,
                    skew=skew, crash_backoff=args.crash_backoff, pod_backoff=args.pod_backoff,
                    state_dir=args.userns_state, ip_family=args.ip_family, mtu=args.mtu)
    return runner.run(timeout=args.timeout)


def choose_mode(asked: str) -> str:
    """netns when root, rootless when user namespaces work, else loopback (auto says so)."""
    from .pods import netns_available, rootless_available

    if asked == "loopback":
        return asked
    if asked == "netns" or (asked == "auto" and os.geteuid() == 0):
        ok, why = netns_available()
        if ok:
            return "netns"
        if asked == "netns":
            raise ConfigError(f"--mode netns: network namespaces are unavailable here ({why}); "
                              "run as root, or use --mode rootless or --mode loopback")
    else:
        ok, why = rootless_available()
        if ok:
            return "rootless"
        if asked == "rootless":
            raise ConfigError(f"--mode rootless: {why}; run as root (--mode netns) or use --mode loopback")
    print(f"notice: network namespaces are unavailable ({why}); falling back to loopback mode", file=sys.stderr)
    return "loopback"


def main(argv=None) -> int:
    from ..extras import require

    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            if args.backend == "cluster":
                require("cluster", "`jobset-runtime local run --backend cluster`")
                embedded_only(args)
                from .controlplane.run import run_on_cluster
                return run_on_cluster(args)
            return run(args)
        if args.command == "cluster":
            require("cluster", f"`jobset-runtime local cluster {args.action}`")
            return cluster(args)
    except JobSetRuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return contract.EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
