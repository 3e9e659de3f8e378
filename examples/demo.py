"""The demo each pod runs: find the coordinator by name, send it our rank, check the sum.

Every value comes from what `jobset-run` exported from the pod's JobSet metadata:
rank and world size, the slice (one Job per slice) and worker within it, and the
coordinator's address.  The coordinator collects every rank over TCP and answers
with the total, which each pod checks against n(n-1)/2.
"""

import os
import socket
import sys
import time

PORT = 5000
rank = int(os.environ["JOBSET_RUNTIME_RANK"])
world = int(os.environ["JOBSET_RUNTIME_WORLD_SIZE"])
coordinator = os.environ["JOBSET_RUNTIME_COORDINATOR_ADDRESS"]
me = (f"rank {rank}/{world} on {socket.gethostname()} (slice {os.environ['MEGASCALE_SLICE_ID']}, "
      f"worker {os.environ['TPU_WORKER_ID']}, IP {os.environ.get('JOBSET_RUNTIME_POD_IP', '?')})")
expected = world * (world - 1) // 2

if rank == 0:
    # Both families: the pods may be IPv4, IPv6 or dual-stack (`local run --ip-family`).
    if socket.has_dualstack_ipv6():
        server = socket.create_server(("::", PORT), family=socket.AF_INET6, dualstack_ipv6=True)
    else:
        server = socket.create_server(("", PORT))
    ranks = [0]
    peers = []
    while len(ranks) < world:
        conn, _ = server.accept()
        ranks.append(int(conn.makefile().readline()))
        peers.append(conn)
    total = sum(ranks)
    for conn in peers:
        conn.sendall(f"{total}\n".encode())
        conn.close()
else:
    deadline = time.monotonic() + 60
    while True:  # the coordinator's name resolves (jobset-run waited for it); its port opens a moment later
        try:
            conn = socket.create_connection((coordinator, PORT), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"{me}: coordinator {coordinator}:{PORT} never accepted a connection")
            time.sleep(0.2)
    conn.sendall(f"{rank}\n".encode())
    total = int(conn.makefile().readline())

print(f"{me}: coordinator {coordinator.split('.')[0]}, sum of ranks {total} (expected {expected})", flush=True)
sys.exit(0 if total == expected else 1)
