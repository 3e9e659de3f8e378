"""`jobset-runtime manifest KIND [options] -- CMD...` and `jobset-runtime manifest validate FILE`.

Prints YAML ready for `kubectl apply -f -`.  Every manifest is checked before it is
printed: the JobSet webhook rules always, the CRD schema when --crd is given or
JOBSET_CRD names a CRD file.  Bad input exits 2 (contract.EXIT_CONFIG) with a
message naming the field and the fix, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import contract
from ..errors import ConfigError

USAGE = """jobset-runtime manifest KIND [options] -- COMMAND...
       jobset-runtime manifest validate FILE [--crd CRD.yaml]

kinds: tpu-multislice, mpi, jax, torch  (`jobset-runtime manifest KIND --help`)"""


def _key_value(text: str, flag: str) -> tuple:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{flag} {text!r}: write KEY=VALUE")
    return key, value


def _toleration(text: str) -> dict:
    """`KEY[=VALUE][:EFFECT]`, as `kubectl taint` spells a taint."""
    body, _, effect = text.partition(":")
    key, sep, value = body.partition("=")
    if not key:
        raise argparse.ArgumentTypeError(f"--toleration {text!r}: write KEY[=VALUE][:EFFECT]")
    tol = {"key": key, "operator": "Equal" if sep else "Exists"}
    if sep:
        tol["value"] = value
    if effect:
        if effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise argparse.ArgumentTypeError(f"--toleration {text!r}: effect must be NoSchedule, "
                                             "PreferNoSchedule or NoExecute")
        tol["effect"] = effect
    return tol


def _common_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common options")
    g.add_argument("--name", required=True, help="JobSet name (a DNS-1035 label)")
    g.add_argument("--namespace", default="default")
    g.add_argument("--image", required=True)
    g.add_argument("--queue", help=f"Kueue LocalQueue (label {contract.KUEUE_QUEUE_LABEL})")
    g.add_argument("--max-restarts", type=int, default=3, help="JobSet restarts for failures other than "
                   f"a configuration error (exit {contract.EXIT_CONFIG}); default 3")
    g.add_argument("--ttl", type=int, help="ttlSecondsAfterFinished")
    g.add_argument("--subdomain", help="headless Service name (default: the JobSet name)")
    g.add_argument("--priority-class")
    g.add_argument("--cpu", help="cpu request = limit, e.g. 8 or 500m")
    g.add_argument("--memory", help="memory request = limit, e.g. 32Gi")
    g.add_argument("--node-selector", action="append", default=[], metavar="K=V",
                   type=lambda t: _key_value(t, "--node-selector"))
    g.add_argument("--toleration", action="append", default=[], metavar="KEY[=VALUE][:EFFECT]", type=_toleration)
    g.add_argument("--env", action="append", default=[], metavar="K=V", type=lambda t: _key_value(t, "--env"))
    g.add_argument("--wait", choices=("coordinator", "slice", "all", "none"),
                   help="which peers jobset-run waits for before starting the command (default: per kind)")
    g.add_argument("--peer-timeout", type=int, metavar="S", help="jobset-run --timeout")
    g.add_argument("--image-pull-policy", choices=("Always", "IfNotPresent", "Never"))
    g.add_argument("--no-fail-fast", dest="fail_fast", action="store_false",
                   help="no group channel between the pods (and no token Secret)")
    g.add_argument("--in-place-restarts", type=int, default=0, metavar="N",
                   help="restart the whole group in place up to N times before JobSet restarts it (jobset-run --restarts)")
    g.add_argument("--crd", help="also validate against this JobSet CRD (default: $JOBSET_CRD if set)")
    return p


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobset-runtime manifest", description=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    common = _common_parser()

    p = sub.add_parser("tpu-multislice", parents=[common], help="N TPU slices of M hosts (MegaScale)")
    p.add_argument("--slices", type=int, required=True)
    p.add_argument("--hosts-per-slice", type=int, required=True)
    p.add_argument("--accelerator", required=True, help="e.g. tpu-v5p-slice")
    p.add_argument("--topology", required=True, help="e.g. 4x4x4")
    p.add_argument("--chips-per-host", type=int, default=4)
    p.add_argument("--exclusive-topology", default="cloud.google.com/gke-nodepool",
                   help="node label key: one slice per value (default cloud.google.com/gke-nodepool)")
    p.add_argument("--host-network", action="store_true")

    p = sub.add_parser("mpi", parents=[common], help="a launcher and N workers over ssh")
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--slots-per-worker", type=int, default=1)
    p.add_argument("--mpi", choices=("openmpi", "mpich", "intel"), default="openmpi")
    p.add_argument("--ssh-key", metavar="FILE", help="use this ed25519 OpenSSH private key instead of a new one")

    p = sub.add_parser("jax", parents=[common], help="multi-host JAX on GPU or CPU")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--hosts", type=int, required=True)
    p.add_argument("--gpus-per-host", type=int, default=0)

    p = sub.add_parser("torch", parents=[common], help="torchrun-style, MASTER_ADDR & co from the runtime")
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--nproc-per-node", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0)

    p = sub.add_parser("validate", help="check a manifest file (or - for stdin)")
    p.add_argument("file")
    p.add_argument("--crd", help="JobSet CRD to validate against (default: $JOBSET_CRD if set)")
    return parser


_KIND_OPTIONS = {
    "tpu-multislice": ("slices", "hosts_per_slice", "accelerator", "topology", "chips_per_host",
                       "exclusive_topology", "host_network"),
    "mpi": ("workers", "slots_per_worker", "mpi"),
    "jax": ("replicas", "hosts", "gpus_per_host"),
    "torch": ("nodes", "nproc_per_node", "gpus_per_node"),
}


def _crd(path: str | None):
    from .validate import load_crd

    path = path or os.environ.get(contract.JOBSET_CRD_ENV)
    if path is None:
        # Unset (not set empty): the CRD the control-plane build took from sigs.k8s.io/jobset,
        # when it is there (`./dev control-plane`); never a build from here.
        from ..local.controlplane import build

        cached = build.cached_dir() / contract.JOBSET_CRD_FILE
        path = str(cached) if build.is_complete(build.cached_dir()) else None
    return load_crd(path) if path else None


def dump_yaml(docs: list) -> str:
    import yaml

    base = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

    class Dumper(base):
        # Shared sub-objects must print in full: `kubectl` accepts anchors, but people
        # reading the manifest should not have to chase them.
        def ignore_aliases(self, data):
            return True

    return yaml.dump_all(docs, Dumper=Dumper, sort_keys=False, default_flow_style=False, explicit_start=True)


def generate(args, command: list) -> list:
    from . import KINDS

    options = {k: getattr(args, k) for k in _KIND_OPTIONS[args.kind]}
    if args.kind == "mpi" and args.ssh_key:
        try:
            with open(args.ssh_key, "rb") as f:
                options["ssh_private_key"] = f.read()
        except OSError as exc:
            raise ConfigError(f"--ssh-key {args.ssh_key}: {exc.strerror}") from None
    return KINDS[args.kind](
        name=args.name, namespace=args.namespace, image=args.image, command=command, queue=args.queue,
        max_restarts=args.max_restarts, ttl=args.ttl, subdomain=args.subdomain,
        priority_class=args.priority_class, cpu=args.cpu, memory=args.memory,
        node_selector=dict(args.node_selector), tolerations=list(args.toleration), env=dict(args.env),
        wait=args.wait, peer_timeout=args.peer_timeout, image_pull_policy=args.image_pull_policy,
        fail_fast=args.fail_fast, in_place_restarts=args.in_place_restarts,
        **options,
    )


def main(argv: list | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list = []
    if "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1:]
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage and the problem
        return contract.EXIT_CONFIG if exc.code else 0
    from .validate import check, document_issues, format_issues, load_documents

    try:
        crd = _crd(args.crd)
        if args.kind == "validate":
            docs = load_documents(args.file)
            issues, count = document_issues(docs, crd)
            if not count and not issues:
                raise ConfigError(f"{args.file}: no JobSet in it (kind: {contract.JOBSET_KIND})")
            if issues:
                print(f"{args.file}: {len(issues)} problem{'s' if len(issues) > 1 else ''}:\n"
                      + format_issues(issues), file=sys.stderr)
                return contract.EXIT_CONFIG
            against = "the CRD schema and the webhook rules" if crd else "the webhook rules (no CRD given)"
            print(f"{args.file}: {count} JobSet{'s' if count > 1 else ''} valid against {against}")
            return 0
        docs = generate(args, command)
        if crd is not None:
            check(docs, crd)
        sys.stdout.write(dump_yaml(docs))
        return 0
    except ConfigError as exc:
        print(f"jobset-runtime manifest: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
