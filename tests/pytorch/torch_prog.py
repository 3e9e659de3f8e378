"""The PyTorch program of the torch tests: torch.distributed with gloo from the env
(env://: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, set by jobset-run or by torchrun),
one all_reduce of rank + 1, and a line `RESULT {json}` per process.

    torch_prog.py [--kill-rank R] [--after S]

--kill-rank: after the all_reduce, rank R SIGKILLs itself S seconds later, and every
rank then sleeps outside any collective with a 10-minute process-group timeout: torch
alone would notice nothing for that long, so only the group channel can end the job.
"""

import argparse
import json
import os
import signal
import socket
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

p = argparse.ArgumentParser()
p.add_argument("--kill-rank", type=int)
p.add_argument("--after", type=float, default=1.0)
args = p.parse_args()

dist.init_process_group("gloo", timeout=timedelta(minutes=10))
rank, world = dist.get_rank(), dist.get_world_size()
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t)
print("RESULT " + json.dumps({
    "rank": rank, "world": world, "sum": t.item(), "host": socket.gethostname(),
    "local_rank": os.environ.get("LOCAL_RANK"), "env": {k: os.environ.get(k) for k in (
        "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "NODE_RANK", "PET_NNODES", "PET_NODE_RANK",
        "PET_NPROC_PER_NODE", "PET_MASTER_ADDR")},
}), flush=True)
if args.kill_rank is not None:
    if rank == args.kill_rank:
        time.sleep(args.after)
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(600)
    sys.exit("still running after 600 s: nothing stopped this rank")
dist.destroy_process_group()
