"""The MPI program of the end-to-end tests: an allreduce, and where every rank ran.

    allreduce_prog.py [--sleep S] [--kill-pod HOST DELAY] [--kill-daemon HOST DELAY]

--sleep: every rank sleeps S seconds after the collectives (rank 0 prints SLEEPING first).

--kill-pod: the ranks on HOST SIGKILL every process of their pod (all processes in
their network namespace, themselves last) after DELAY seconds, as a node losing
the pod or the OOM killer would; the other ranks wait in a barrier.
--kill-daemon: the first rank on HOST SIGKILLs the MPI daemon it runs under (its
parent: prted, orted or hydra_pmi_proxy) after DELAY seconds, and nothing else; the
pod and its worker live on.  Every rank then waits in a barrier.
"""

import json
import os
import signal
import socket
import sys
import time

from mpi4py import MPI


def kill_my_pod():
    mine = os.readlink("/proc/self/ns/net")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(pid) != os.getpid() and os.readlink(f"/proc/{pid}/ns/net") == mine:
                os.kill(int(pid), signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    os.kill(os.getpid(), signal.SIGKILL)


comm = MPI.COMM_WORLD
total = comm.allreduce(comm.rank + 1, op=MPI.SUM)
hosts = comm.gather(socket.gethostname(), root=0)
yields = comm.gather(os.environ.get("OMPI_MCA_mpi_yield_when_idle"), root=0)  # what each rank's Open MPI reads
args = sys.argv[1:]
if "--kill-pod" in args:
    i = args.index("--kill-pod")
    if socket.gethostname() == args[i + 1]:
        time.sleep(float(args[i + 2]))
        kill_my_pod()
    time.sleep(30)
    comm.Barrier()
if "--kill-daemon" in args:
    i = args.index("--kill-daemon")
    here = comm.Split_type(MPI.COMM_TYPE_SHARED)
    if socket.gethostname() == args[i + 1] and here.rank == 0:
        time.sleep(float(args[i + 2]))
        daemon = os.getppid()
        print(f"killing my daemon {open(f'/proc/{daemon}/comm').read().strip()} (pid {daemon})", flush=True)
        os.kill(daemon, signal.SIGKILL)
    time.sleep(30)
    comm.Barrier()
if "--sleep" in args:
    if comm.rank == 0:
        print("SLEEPING", flush=True)  # every rank is up: the collectives above took them all
    time.sleep(float(args[args.index("--sleep") + 1]))
    comm.Barrier()
if comm.rank == 0:
    library = MPI.Get_library_version().strip().splitlines()[0]
    print("RESULT " + json.dumps({"size": comm.size, "sum": total, "hosts": hosts, "library": library,
                                  "yield": yields}), flush=True)
