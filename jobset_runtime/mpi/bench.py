"""Measure the network between the pods: `python -m mpi4py -m jobset_runtime.mpi.bench pingpong|allreduce`.

Run by mpirun on every rank (the `mpi` manifest's `--bench` puts it after the launcher's
`--`); rank 0 prints one table, a row per message size:

  pingpong   mpi4py's own benchmark (`mpi4py.bench.pingpong`, MPI_Send/MPI_Recv, half the
             round trip) between rank 0 and the first rank on another host, so the path
             measured crosses the pod network, never shared memory.
  allreduce  MPI_Allreduce (sum of float32) over every rank, timed as OSU's osu_allreduce
             does (a barrier, then the mean over iterations; the slowest rank counts), with
             the bus bandwidth of nccl-tests (doc/PERFORMANCE.md: algbw x 2(n-1)/n), and the
             sum checked on every rank.

The numbers are for finding a slow path ("why is this job slow?"), like the OSU runs
in the JobSet talk; they are not a product figure.
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_MAX_SIZE = 1 << 22  # 4 MiB
SMALL, LARGE = 1 << 13, 1 << 20  # iterations drop above these sizes, as OSU's do


def sizes(min_size: int, max_size: int) -> list[int]:
    """Powers of two from min_size to max_size."""
    out, n = [], 1
    while n <= max_size:
        if n >= min_size:
            out.append(n)
        n <<= 1
    return out


def iterations(size: int, loop: int) -> tuple[int, int]:
    """(warm-up, timed) iterations for one size: fewer for large messages."""
    timed = loop if size <= SMALL else max(1, loop // 10) if size <= LARGE else max(1, loop // 100)
    return max(1, timed // 10), timed


def bus_bandwidth(size: int, seconds: float, ranks: int) -> float:
    """Bytes/s each rank's links carry in a ring allreduce: size/t x 2(n-1)/n (nccl-tests)."""
    if seconds <= 0 or ranks < 2:
        return 0.0
    return size / seconds * 2 * (ranks - 1) / ranks


def format_table(title: list[str], header: tuple, rows: list[tuple]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = [f"# {t}" for t in title]
    lines.append("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines) + "\n"


def _mb_s(nbytes: float, seconds: float) -> str:
    if seconds <= 0:
        return "-"
    v = nbytes / seconds / 1e6
    return f"{v:.2f}" if v >= 1 else f"{v:.6f}"  # small messages on a slow path stay readable


def pingpong_rows(results) -> list[tuple]:
    """mpi4py.bench.pingpong's [(bytes, mean s, stdev s)] -> table rows."""
    return [(str(n), f"{t * 1e6:.2f}", _mb_s(n, t)) for n, t, _ in results]


def allreduce_rows(results, ranks: int) -> list[tuple]:
    """[(bytes, avg, min, max seconds per call over the ranks)] -> table rows; the bandwidths
    use the slowest rank, since a collective ends with it."""
    return [(str(n), f"{avg * 1e6:.2f}", f"{lo * 1e6:.2f}", f"{hi * 1e6:.2f}", _mb_s(n, hi),
             _mb_s(bus_bandwidth(n, hi, ranks), 1.0)) for n, avg, lo, hi in results]


PINGPONG_HEADER = ("size [B]", "latency [us]", "bandwidth [MB/s]")
ALLREDUCE_HEADER = ("size [B]", "avg [us]", "min [us]", "max [us]", "algbw [MB/s]", "busbw [MB/s]")


# --- MPI (I/O) -------------------------------------------------------------------------

def _hosts(comm) -> list[str]:
    from mpi4py import MPI

    return comm.allgather(MPI.Get_processor_name())


def _library() -> str:
    from mpi4py import MPI

    return MPI.Get_library_version().splitlines()[0].split(",")[0].strip()


def run_pingpong(comm, min_size: int, max_size: int, loop: int, out) -> int:
    from mpi4py import MPI
    from mpi4py.bench import pingpong

    hosts = _hosts(comm)
    partner = next((r for r, h in enumerate(hosts) if h != hosts[0]), 1 if comm.size > 1 else None)
    if partner is None:
        if comm.rank == 0:
            print("pingpong needs 2 ranks", file=sys.stderr)
        return 2
    pair = comm.Split(0 if comm.rank in (0, partner) else MPI.UNDEFINED, 0 if comm.rank == 0 else 1)
    if pair == MPI.COMM_NULL:
        comm.Barrier()
        return 0
    args = ["-m", str(min_size), "-n", str(max_size), "-l", str(loop), "-s", str(max(1, loop // 10)),
            "--loop-large", str(max(1, loop // 10)), "--skip-large", "2", "--large-size", str(SMALL),
            "--loop-huge", str(max(1, loop // 100)), "--skip-huge", "1", "--huge-size", str(LARGE)]
    results = pingpong(pair, args, verbose=False)
    pair.Free()
    comm.Barrier()
    if comm.rank == 0:
        where = "" if hosts[partner] != hosts[0] else ", the same host: no second host in the job"
        title = [f"MPI pingpong (mpi4py.bench), {_library()}",
                 f"rank 0 on {hosts[0]} <-> rank {partner} on {hosts[partner]}{where}"]
        out.write(format_table(title, PINGPONG_HEADER, pingpong_rows(results)))
        out.flush()
    return 0


def run_allreduce(comm, min_size: int, max_size: int, loop: int, out) -> int:
    import numpy as np
    from mpi4py import MPI

    hosts = _hosts(comm)
    n = comm.size
    results = []
    for size in sizes(max(4, min_size), max_size):
        count = size // 4
        send = np.full(count, comm.rank + 1, dtype=np.float32)
        recv = np.empty(count, dtype=np.float32)
        skip, timed = iterations(size, loop)
        for _ in range(skip):
            comm.Allreduce(send, recv, op=MPI.SUM)
        comm.Barrier()
        start = MPI.Wtime()
        for _ in range(timed):
            comm.Allreduce(send, recv, op=MPI.SUM)
        mine = (MPI.Wtime() - start) / timed
        expected = n * (n + 1) / 2
        if not np.all(recv == expected):
            raise SystemExit(f"rank {comm.rank}: allreduce of {size} bytes gave {recv[:4]}..., not {expected}")
        results.append((size, comm.allreduce(mine, op=MPI.SUM) / n, comm.allreduce(mine, op=MPI.MIN),
                        comm.allreduce(mine, op=MPI.MAX)))
    if comm.rank == 0:
        title = [f"MPI allreduce (float32 sum, checked), {_library()}",
                 f"{n} ranks on {len(set(hosts))} hosts: {', '.join(sorted(set(hosts)))}"]
        out.write(format_table(title, ALLREDUCE_HEADER, allreduce_rows(results, n)))
        out.flush()
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobset_runtime.mpi.bench",
                                description="Latency and bandwidth between the job's pods, per message size.")
    p.add_argument("kind", choices=("pingpong", "allreduce"))
    p.add_argument("--min-size", type=int, default=1, metavar="BYTES")
    p.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE, metavar="BYTES")
    p.add_argument("--loop", type=int, default=1000, metavar="N",
                   help="timed iterations for small messages (fewer above 8 KiB and 1 MiB); default 1000")
    args = p.parse_args(argv)
    if args.min_size < 1 or args.max_size < args.min_size or args.loop < 1:
        p.error("need 1 <= --min-size <= --max-size and --loop >= 1")
    from mpi4py import MPI

    run = run_pingpong if args.kind == "pingpong" else run_allreduce
    return run(MPI.COMM_WORLD, args.min_size, args.max_size, args.loop, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
