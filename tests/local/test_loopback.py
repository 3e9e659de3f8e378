"""Loopback mode: no namespaces (and no root) needed; pod names resolve only through
the embedded DNS server that JOBSET_RUNTIME_NAMESERVERS names."""

import localfixtures as lf


def ok(r):
    return f"rc={r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"


def test_loopback_mode_names_resolve_through_the_embedded_server(tmp_path):
    code = r"""
import os, dns.resolver
ns, port = os.environ["JOBSET_RUNTIME_NAMESERVERS"].split(":")
r = dns.resolver.Resolver(configure=False); r.nameservers = [ns]; r.port = int(port)
for i in (0, 1):
    name = f"lb-w-0-{i}.lb.default.svc.cluster.local"
    for _ in range(100):
        try:
            print(os.environ["HOSTNAME"], "sees", name, r.resolve(name, "A")[0].address, flush=True); break
        except Exception:
            import time; time.sleep(0.05)
import time; time.sleep(0.3)
"""
    js = lf.jobset("lb", [("w", 1, 2, lf.py(code))])
    r = lf.run_local(tmp_path, js, args=["--timeout", "60", "--mode", "loopback"])
    assert r.returncode == 0, ok(r)
    assert "loopback mode" in r.stdout
    assert r.stdout.count("sees lb-w-0-") == 4 and " 127.18." in r.stdout, ok(r)
