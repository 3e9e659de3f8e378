"""Cluster DNS from the API: the project's DNS server (local/dns.py) fed by watches
on Services and EndpointSlices, with the answers CoreDNS's kubernetes plugin gives.

- A Service with a ClusterIP: `<svc>.<ns>.svc.<domain>` is that IP.
- A headless Service (clusterIP None): `<svc>.<ns>.svc.<domain>` is every ready
  endpoint's address, and `<hostname>.<svc>.<ns>.svc.<domain>` the address of
  the endpoint with that hostname (the endpointslice controller sets `hostname`
  for a pod whose spec.subdomain is the Service's name).
- Ready means the endpoint's `conditions.ready` is true or absent; with
  `publishNotReadyAddresses` the endpointslice controller marks every endpoint
  ready, so a pod is in DNS from the moment it has an IP.
- A pod that goes leaves its EndpointSlice, and so DNS.
"""

from __future__ import annotations

import sys
import threading
import time

SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # EndpointSlice -> its Service


def records(services: dict, slices: dict, domain: str) -> dict[str, list[str]]:
    """{fqdn: [ips]} from {(ns, name): Service} and {(ns, name): EndpointSlice} dicts."""
    out: dict[str, set] = {}
    by_service: dict = {}
    for (ns, _), sl in slices.items():
        svc = ((sl.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
        if svc:
            by_service.setdefault((ns, svc), []).append(sl)
    for (ns, name), svc in services.items():
        base = f"{name}.{ns}.svc.{domain}"
        spec = svc.get("spec") or {}
        cip = spec.get("clusterIP")
        if cip and cip != "None":
            out.setdefault(base, set()).add(cip)
            continue
        if spec.get("type") == "ExternalName":
            continue
        for sl in by_service.get((ns, name), []):
            if sl.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
                continue
            for ep in sl.get("endpoints") or []:
                ready = (ep.get("conditions") or {}).get("ready")
                if ready is False:
                    continue
                addrs = ep.get("addresses") or []
                out.setdefault(base, set()).update(addrs)
                if ep.get("hostname"):
                    out.setdefault(f"{ep['hostname']}.{base}", set()).update(addrs)
    return {k: sorted(v) for k, v in out.items() if v}


class ClusterDns:
    """Two watches (Services, EndpointSlices) keep `server`'s records equal to records()."""

    def __init__(self, api, server, domain: str, delay: float = 0.0):
        self.api, self.server, self.domain, self.delay = api, server, domain, delay
        self.services: dict = {}
        self.slices: dict = {}
        self._lock = threading.Lock()
        self._current: dict = {}
        self._stopping = threading.Event()

    def start(self) -> None:
        from lightkube.resources.core_v1 import Service
        from lightkube.resources.discovery_v1 import EndpointSlice

        for res, store in ((Service, self.services), (EndpointSlice, self.slices)):
            threading.Thread(target=self._watch, args=(res, store), daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()

    def _watch(self, res, store: dict) -> None:
        from lightkube import ALL_NS

        client = self.api.new_client()
        while not self._stopping.is_set():
            try:
                for kind, obj in client.watch(res, namespace=ALL_NS):
                    if self._stopping.is_set():
                        return
                    d = obj.to_dict()
                    key = (d["metadata"].get("namespace", ""), d["metadata"]["name"])
                    with self._lock:
                        if kind == "DELETED":
                            store.pop(key, None)
                        else:
                            store[key] = d
                        self._sync()
            except Exception as e:
                if self._stopping.is_set():
                    return
                print(f"cluster DNS watch on {res.__name__}: {e}; watching again", file=sys.stderr, flush=True)
                time.sleep(1.0)

    def _sync(self) -> None:
        want = records(self.services, self.slices, self.domain)
        for name in set(self._current) - set(want):
            self.server.remove(name)
        for name, ips in want.items():
            if self._current.get(name) != ips:
                # --dns-delay: a new name becomes visible late, as cluster DNS often is.
                self.server.set(name, ips, visible_after=0.0 if name in self._current else self.delay)
        self._current = want
