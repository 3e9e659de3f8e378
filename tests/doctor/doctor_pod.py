"""Runs inside a local-runner pod for test_doctor_local.py.

`stale`: a dnsmasq sidecar on 169.254.20.10 is the pod's only nameserver (a node-local
DNS cache). The pod asks it for its own and the coordinator's name while cluster DNS
has no record yet (the runner's --dns-delay), so the cache keeps NXDOMAIN; once cluster
DNS answers, `jobset-runtime doctor --format json` runs as a user would run it, and once
more with JOBSET_RUNTIME_NAMESERVERS pointing at cluster DNS.

`healthy`: `jobset-runtime doctor --format json` and `jobset-run --doctor`, after the
coordinator resolves.

Each report goes to $DOCTOR_OUT/<hostname>.<variant>.json; a pod exits once every pod is done.
"""

import json
import os
import subprocess
import sys
import time

from jobset_runtime import contract, peers
from jobset_runtime.podinfo import current_identity

OUT = os.environ["DOCTOR_OUT"]
CLUSTER_DNS = (os.environ["DOCTOR_CLUSTER_DNS"], 53)
ident = current_identity()
names = list(dict.fromkeys([ident.fqdn(), ident.fqdn(ident.coordinator)]))


def ask(server):
    return peers.resolve_batch(names, [server], tries=2, max_rto=0.3, silence=1.0, deadline=time.monotonic() + 2)


def until(pred, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {what}")


def save(variant, doc):
    with open(os.path.join(OUT, f"{ident.hostname}.{variant}.json"), "w") as f:
        json.dump(doc, f)


def doctor(extra_env=None):
    p = subprocess.run([sys.executable, "-m", "jobset_runtime", "doctor", "--format", "json"],
                       env={**os.environ, **(extra_env or {})}, capture_output=True, text=True, timeout=60)
    return {"rc": p.returncode, "report": json.loads(p.stdout), "stderr": p.stderr}


mode = sys.argv[1]
if mode == "stale":
    cache = (os.environ["DOCTOR_CACHE"], 53)
    primed = until(lambda: (r := ask(cache)).replies and r, "the cache sidecar to answer")
    until(lambda: len(ask(CLUSTER_DNS).resolved) == len(names), "cluster DNS to publish the records")
    save("primed", {"failed": primed.failed, "resolved": primed.resolved})
    save("plain", doctor())
    save("direct", doctor({contract.NAMESERVERS_ENV: f"{CLUSTER_DNS[0]}"}))
else:
    until(lambda: len(ask(CLUSTER_DNS).resolved) == len(names), "cluster DNS to publish the records")
    save("plain", doctor())
    p = subprocess.run([sys.executable, "-c", "import sys; from jobset_runtime.cli import run_main; "
                        "sys.exit(run_main())", "--doctor", "--group", "off", "--timeout", "30"],
                       capture_output=True, text=True, timeout=60)
    save("wrapper", {"rc": p.returncode, "stderr": p.stderr})

# A pod that ends takes its DNS record with it: stay until every pod has its reports.
open(os.path.join(OUT, f"{ident.hostname}.done"), "w").close()
until(lambda: len([n for n in os.listdir(OUT) if n.endswith(".done")]) == ident.world_size, "the other pods")
