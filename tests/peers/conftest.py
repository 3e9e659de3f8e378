import dnsfixtures
import pytest

from jobset_runtime.local.dns import DnsServer

ZONE = "svc.cluster.local"

needs_dnsmasq = pytest.mark.skipif(
    dnsfixtures.find_dnsmasq() is None, reason="dnsmasq is not installed (Debian: apt-get install dnsmasq-base)"
)


@pytest.fixture
def dns_server():
    with DnsServer(zones=[ZONE]) as server:
        yield server


@pytest.fixture
def dnsmasq(tmp_path):
    if dnsfixtures.find_dnsmasq() is None:
        pytest.skip("dnsmasq is not installed (Debian: apt-get install dnsmasq-base)")
    with dnsfixtures.Dnsmasq(tmp_path) as server:
        yield server
