import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from jobset_runtime.local.dns import DnsServer


@pytest.fixture
def dns_server():
    with DnsServer("127.0.0.1", 0, zones=["svc.cluster.local"]) as server:
        yield server


@pytest.fixture(autouse=True)
def _environ_restored():
    """`import jax` writes os.environ (TPU_SKIP_MDS_QUERY=1 without a TPU chip): keep that inside this area."""
    import os

    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)
