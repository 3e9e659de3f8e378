"""Build the control plane's binaries from their published Go modules, cached by version.

    python -m jobset_runtime.local.controlplane.build [--cache DIR]   (./dev control-plane)

Each component is built in a throwaway Go module under the cache (never in the
repository), with the machine's Go and the Go module proxy:

- kube-apiserver, kube-controller-manager, kube-scheduler, kubectl from
  k8s.io/kubernetes.  Its go.mod points every k8s.io/* staging module at
  ./staging/src/..., a path that only exists in its own repository, so the
  throwaway module replaces each one with its published release instead.
- etcd from go.etcd.io/etcd/server/v3: a three-line main calling etcdmain.Main,
  which is all the root module's main.go does.
- the JobSet manager: sigs.k8s.io/jobset's root package; its CRD file and its
  webhook configurations are copied from the module's config/components/.

The result is built in a temporary directory and renamed into place, so a
directory under the cache is either complete or absent; a present one is kept.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ... import contract

KUBERNETES_MODULE = "k8s.io/kubernetes"
KUBERNETES_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
ETCD_MODULE = "go.etcd.io/etcd/server/v3"
JOBSET_MODULE = "sigs.k8s.io/jobset"
JOBSET_CRD_DIR = "config/components/crd/bases"
JOBSET_WEBHOOKS = "config/components/webhook/manifests.yaml"
GO_VERSION_LINE = "go 1.26.0"  # what k8s.io/kubernetes v1.36 and sigs.k8s.io/jobset v0.12 declare
STAMP = "versions.json"

# `k8s.io/api => ./staging/src/k8s.io/api` in k8s.io/kubernetes's go.mod.
_STAGING_REPLACE = re.compile(r"^\s*(?:replace\s+)?(k8s\.io/[\w.-]+)\s+=>\s+\./staging/src/\1\s*$", re.MULTILINE)

ETCD_MAIN = """package main

import (
\t"os"

\t"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
"""


class BuildError(Exception):
    pass


def cache_root() -> Path:
    return Path(os.path.expanduser(contract.CONTROL_PLANE_CACHE))


def cached_dir(root: Path | None = None) -> Path:
    return (root or cache_root()) / contract.CONTROL_PLANE_VERSIONS


def is_built(d: Path) -> bool:
    return (d / STAMP).is_file() and all((d / b).is_file() for b in contract.CONTROL_PLANE_BINARIES)


def is_complete(d: Path) -> bool:
    return is_built(d) and all((d / f).is_file() for f in (contract.JOBSET_CRD_FILE, contract.JOBSET_WEBHOOKS_FILE))


def staging_modules(kubernetes_go_mod: str) -> list[str]:
    """Every k8s.io/* module k8s.io/kubernetes takes from its own staging tree."""
    mods = sorted(set(_STAGING_REPLACE.findall(kubernetes_go_mod)))
    if not mods:
        raise BuildError("k8s.io/kubernetes's go.mod names no staging module: not a Kubernetes release?")
    return mods


def kubernetes_go_mod(staging: list[str]) -> str:
    lines = ["module jobset-runtime.local/control-plane/kubernetes", "", GO_VERSION_LINE,
             "godebug default=go1.26", "",
             f"require {KUBERNETES_MODULE} {contract.KUBERNETES_VERSION}", ""]
    lines += [f"replace {m} => {m} {contract.KUBERNETES_STAGING_VERSION}" for m in staging]
    return "\n".join(lines) + "\n"


def version_ldflags() -> str:
    """What hack/lib/version.sh stamps, so `kubectl version` and the API's /version tell the truth."""
    v = contract.KUBERNETES_VERSION
    major, minor = v.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.gitVersion={v}", f"-X {pkg}.gitMajor={major}",
                  f"-X {pkg}.gitMinor={minor}", f"-X {pkg}.gitTreeState=clean"]
    return " ".join(flags)


def _go(args: list[str], cwd: Path, log, capture: bool = False) -> str:
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=mod", GOWORK="off")
    cmd = ["nice", "-n", "19", "go", *args]
    print(f"[{time.strftime('%H:%M:%S')}] (in {cwd.name}) {' '.join(cmd)}", file=log, flush=True)
    r = subprocess.run(cmd, cwd=cwd, env=env, text=True,
                       stdout=subprocess.PIPE if capture else log, stderr=log)
    if r.returncode != 0:
        raise BuildError(f"`go {' '.join(args[:2])} ...` failed in {cwd} (exit {r.returncode}); see the log above")
    return r.stdout if capture else ""


def _module(work: Path, name: str, go_mod: str) -> Path:
    d = work / name
    d.mkdir()
    (d / "go.mod").write_text(go_mod)
    return d


def _download(mod_dir: Path, module: str, version: str, log) -> dict:
    return json.loads(_go(["mod", "download", "-json", f"{module}@{version}"], mod_dir, log, capture=True))


def build(out: Path, work: Path, log) -> None:
    build_flags = ["build", "-trimpath", f"-ldflags={version_ldflags()}"]

    # Kubernetes: read its go.mod to learn the staging modules, then build the four commands at once.
    probe = _module(work, "probe", f"module jobset-runtime.local/probe\n\n{GO_VERSION_LINE}\n")
    info = _download(probe, KUBERNETES_MODULE, contract.KUBERNETES_VERSION, log)
    staging = staging_modules(Path(info["GoMod"]).read_text())
    k8s = _module(work, "kubernetes", kubernetes_go_mod(staging))
    _go([*build_flags, "-o", str(out) + "/",
         *[f"{KUBERNETES_MODULE}/cmd/{c}" for c in KUBERNETES_COMMANDS]], k8s, log)

    etcd = _module(work, "etcd", f"module jobset-runtime.local/control-plane/etcd\n\n{GO_VERSION_LINE}\n\n"
                                 f"require {ETCD_MODULE} {contract.ETCD_VERSION}\n")
    (etcd / "main.go").write_text(ETCD_MAIN)
    _go(["build", "-trimpath", "-ldflags=-s -w", "-o", str(out / "etcd"), "."], etcd, log)

    js = _module(work, "jobset", f"module jobset-runtime.local/control-plane/jobset\n\n{GO_VERSION_LINE}\n\n"
                                 f"require {JOBSET_MODULE} {contract.JOBSET_VERSION}\n")
    _go(["build", "-trimpath", "-ldflags=-s -w", "-o", str(out / "jobset-manager"), JOBSET_MODULE], js, log)
    copy_jobset_files(out, js, log)



def copy_jobset_files(out: Path, mod_dir: Path, log) -> None:
    """The JobSet CRD and webhook configurations, from the module's own files."""
    info = _download(mod_dir, JOBSET_MODULE, contract.JOBSET_VERSION, log)
    src = Path(info["Dir"])
    for rel, name in ((f"{JOBSET_CRD_DIR}/{contract.JOBSET_CRD_FILE}", contract.JOBSET_CRD_FILE),
                      (JOBSET_WEBHOOKS, contract.JOBSET_WEBHOOKS_FILE)):
        shutil.copyfile(src / rel, out / (name + ".tmp"))
        os.replace(out / (name + ".tmp"), out / name)


def ensure(root: Path | None = None, log=sys.stderr) -> Path:
    """The cached binaries' directory, built first if absent."""
    root = root or cache_root()
    final = cached_dir(root)
    if is_complete(final):
        return final
    if shutil.which("go") is None:
        raise BuildError("Go is not installed: install Go 1.26+ (https://go.dev/dl/) "
                         f"or set {contract.CONTROL_PLANE_ENV}=DIR to prebuilt binaries")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second build waits for the first, then finds it done
        if is_complete(final):
            return final
        if is_built(final):  # built by an older layout without every data file: add them
            with tempfile.TemporaryDirectory(dir=root) as t:
                copy_jobset_files(final, _module(Path(t), "jobset", f"module jobset-runtime.local/files\n\n"
                                                 f"{GO_VERSION_LINE}\n"), log)
            return final
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
        try:
            out = tmp / "out"
            out.mkdir()
            (tmp / "work").mkdir()
            started = time.monotonic()
            build(out, tmp / "work", log)
            seconds = time.monotonic() - started
            print(f"built in {seconds:.0f} s", file=log, flush=True)
            (out / STAMP).write_text(json.dumps({
                "kubernetes": contract.KUBERNETES_VERSION, "staging": contract.KUBERNETES_STAGING_VERSION,
                "etcd": contract.ETCD_VERSION, "jobset": contract.JOBSET_VERSION, "build_seconds": round(seconds),
                "go": subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True).stdout.strip(),
            }, indent=1) + "\n")
            if final.exists():  # an incomplete leftover from an older layout
                shutil.rmtree(final)
            out.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobset_runtime.local.controlplane.build",
                                description="Build the control plane's binaries into the cache and print their directory.")
    p.add_argument("--cache", type=Path, help=f"cache root (default {contract.CONTROL_PLANE_CACHE})")
    a = p.parse_args(argv)
    try:
        d = ensure(a.cache)
    except BuildError as e:
        print(f"control-plane build: {e}", file=sys.stderr)
        return contract.EXIT_CONFIG
    print(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
