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
    # Set by run_rootless on the command it runs inside the user namespace it makes.
    r.add_argument("--userns-state", default=None, help=argparse.SUPPRESS)
    return p


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


def run(args) -> int:
    from . import spec
    from .runner import Runner

    try:
        with open(args.file) as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {args.file}: {e.strerror}")
    js_raw, objects = spec.split_documents(spec.load_documents(text, args.file), args.file)
    js = spec.apply_defaults(js_raw)
    ignored = spec.notices(js)
    if ignored:
        print(f"notice: no effect on one machine (one node runs every pod): {', '.join(ignored)}", file=sys.stderr)
    skew = _parse_skew(args.skew)
    if args.mtu is not None and not 68 <= args.mtu <= 65535:
        raise ConfigError(f"--mtu {args.mtu}: an interface MTU is 68 to 65535 bytes (IPv4's minimum to the largest)")
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
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return run(args)
    except JobSetRuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return contract.EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
