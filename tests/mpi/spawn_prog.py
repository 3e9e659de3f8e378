"""The dynamic-process program of the MPI tests: rank 0 spawns 2 children with MPI_Comm_spawn.

Every rank of the parent job takes part (Spawn is collective); the children send
their hostnames back, and rank 0 prints `SPAWNED {"hosts": [...]}`.
"""

import json
import socket
import sys

from mpi4py import MPI

parent = MPI.Comm.Get_parent()
if parent != MPI.COMM_NULL:  # a child
    parent.gather(socket.gethostname(), root=0)
    parent.Disconnect()
    sys.exit(0)
comm = MPI.COMM_WORLD
children = comm.Spawn(sys.executable, args=[__file__], maxprocs=2, root=0)
hosts = children.gather(None, root=MPI.ROOT if comm.rank == 0 else MPI.PROC_NULL)
children.Disconnect()
if comm.rank == 0:
    print("SPAWNED " + json.dumps({"parents": comm.size, "hosts": hosts}), flush=True)
