"""The kubeconfig file every component and kubectl use: one cluster, one admin user."""

from __future__ import annotations

import base64

import yaml

CONTEXT = "jobset-runtime"


def render(server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> str:
    b64 = lambda b: base64.b64encode(b).decode()
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": CONTEXT, "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": "admin", "user": {"client-certificate-data": b64(cert_pem),
                                             "client-key-data": b64(key_pem)}}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": "admin"}}],
        "current-context": CONTEXT,
    }, sort_keys=False)
