"""Container probes (startup, readiness, liveness) as the kubelet runs them.

pkg/kubelet/prober: the first probe after initialDelaySeconds, then one every
periodSeconds (default 10); a result flips after successThreshold (default 1)
successes or failureThreshold (default 3) failures in a row; each probe has
timeoutSeconds (default 1).  exec runs a command in the container (here: in
its namespaces, with nsenter); tcpSocket opens a connection; httpGet expects a
status in 200..399.  The kubelet probes from the node; here tcpSocket and
httpGet run from a thread that has entered the pod's network namespace.

Each probe runs in a short-lived thread so the runner's loop never blocks; the
result is handed back through `post(result)`.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import threading
from dataclasses import dataclass

from ..errors import ConfigError

CLONE_NEWNET = 0x40000000
KINDS = ("startupProbe", "readinessProbe", "livenessProbe")


@dataclass
class ProbeSpec:
    kind: str                  # startupProbe, readinessProbe, livenessProbe
    handler: str               # exec, tcpSocket, httpGet
    spec: dict
    initial_delay: float
    period: float
    timeout: float
    success_threshold: int
    failure_threshold: int


def parse(container: dict) -> dict:
    """{kind: ProbeSpec} of a container; ConfigError for handlers not supported here."""
    out = {}
    for kind in KINDS:
        p = container.get(kind)
        if not p:
            continue
        handler = next((h for h in ("exec", "tcpSocket", "httpGet") if h in p), None)
        if handler is None:
            raise ConfigError(f"container {container.get('name')}: {kind} needs exec, tcpSocket or httpGet "
                              "(grpc probes are not supported by the local runner)")
        if handler == "httpGet" and str(p["httpGet"].get("scheme", "HTTP")).upper() != "HTTP":
            raise ConfigError(f"container {container.get('name')}: {kind} httpGet supports scheme HTTP only here")
        out[kind] = ProbeSpec(
            kind=kind, handler=handler, spec=p[handler],
            initial_delay=float(p.get("initialDelaySeconds", 0)), period=float(p.get("periodSeconds", 10)),
            timeout=float(p.get("timeoutSeconds", 1)),
            # pkg/apis/core/validation: liveness and startup probes must have successThreshold 1.
            success_threshold=int(p.get("successThreshold", 1)) if kind == "readinessProbe" else 1,
            failure_threshold=int(p.get("failureThreshold", 3)))
    return out


def port_of(container: dict, port) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ConfigError(f"container {container.get('name')}: probe port {port!r} names no port of the container")


def _enter_netns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def _tcp(host: str, port: int, timeout: float) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _http(host: str, port: int, spec: dict, timeout: float) -> bool:
    import http.client

    conn = http.client.HTTPConnection(spec.get("host") or host, port, timeout=timeout)
    try:
        headers = {h["name"]: h["value"] for h in spec.get("httpHeaders") or []}
        conn.request("GET", spec.get("path", "/"), headers=headers)
        return 200 <= conn.getresponse().status < 400
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def run_async(probe: ProbeSpec, *, container: dict, pod_ip: str, netns_path: str | None,
              exec_prefix: list, env: dict, post) -> None:
    """Run one probe in a thread; `post(ok)` is called from that thread."""

    def body():
        ok = False
        try:
            if probe.handler == "exec":
                argv = exec_prefix + [str(a) for a in probe.spec.get("command") or []]
                try:
                    ok = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, timeout=probe.timeout).returncode == 0
                except subprocess.TimeoutExpired:
                    ok = False
            else:
                if netns_path:
                    _enter_netns(netns_path)  # this thread only, and it ends with the probe
                port = port_of(container, probe.spec.get("port"))
                host = probe.spec.get("host") or pod_ip
                ok = _tcp(host, port, probe.timeout) if probe.handler == "tcpSocket" else \
                    _http(host, port, probe.spec, probe.timeout)
        except Exception:  # a probe that cannot run is a failed probe, as in the kubelet
            ok = False
        post(ok)

    threading.Thread(target=body, name=f"probe-{probe.kind}", daemon=True).start()
