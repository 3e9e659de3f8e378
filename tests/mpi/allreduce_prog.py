"""The MPI program of the end-to-end tests: an allreduce, and where every rank ran."""

import json
import socket
import sys
import time

from mpi4py import MPI

comm = MPI.COMM_WORLD
total = comm.allreduce(comm.rank + 1, op=MPI.SUM)
hosts = comm.gather(socket.gethostname(), root=0)
if len(sys.argv) > 1 and sys.argv[1] == "--sleep":
    time.sleep(float(sys.argv[2]))
    comm.Barrier()
if comm.rank == 0:
    print("RESULT " + json.dumps({"size": comm.size, "sum": total, "hosts": hosts}), flush=True)
