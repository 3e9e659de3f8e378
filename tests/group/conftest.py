import os

import pytest

from jobset_runtime.local.dns import DnsServer


@pytest.fixture
def token():
    return os.urandom(32).hex().encode()


@pytest.fixture
def token_file(tmp_path, token):
    path = tmp_path / "token"
    path.write_bytes(token + b"\n")
    return path


@pytest.fixture
def pod_dns():
    """A real DNS server on loopback for the pods' names (grouphelpers.fqdn)."""
    dns = DnsServer(zones=["svc.cluster.local"]).start()
    yield dns
    dns.stop()
