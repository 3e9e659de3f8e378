"""What mpirun says on its stderr that the launcher acts on: that the job is ending.

mpirun prints one of these when the job is being torn down, whatever comes
next: it exits shortly after.  Open MPI 5.0.11 sometimes does not: after a
rank's MPI_Abort a daemon's PMIx thread can deadlock (seen here: blocked on
a mutex in `pmix_pending_resolve`, every other thread idle), mpirun then
waits for that daemon forever, and the job hangs with no rank left anywhere.
So the launcher relays mpirun's stderr, notes the first announcement, and
gives mpirun launcher.ENDING_EXIT_S to exit after it (launcher.py).

The texts, from each MPI's own sources (each message's first line):
    Open MPI 4, 5   ompi/runtime/help-mpi-api.txt [mpi-abort], printed by the rank
                    that calls MPI_Abort: "invoking MPI_ABORT causes Open MPI to kill
                    all MPI processes"
    PRRTE / ORTE    help-errmgr-base.txt [node-died] (prrte: src/mca/errmgr/,
                    open-mpi/ompi v4.1.x: orte/mca/errmgr/base/): "... will terminate
                    the job"
    PRRTE / ORTE    help-prun.txt / help-orterun.txt: "%s detected that one or more
                    processes exited with non-zero status, thus causing the job to be
                    terminated"
    MPICH, Intel    Hydra's mpiexec (pmiserv / ui): "BAD TERMINATION OF ONE OF YOUR
                    APPLICATION PROCESSES", printed once a rank ended badly
"""

from __future__ import annotations

import os
import threading
import time

ENDINGS = (
    b"MPI_ABORT was invoked on rank",
    b"has lost communication with a remote daemon",
    b"detected that one or more processes exited with non-zero status",
    b"BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES",
)
_KEEP = max(len(e) for e in ENDINGS) - 1  # bytes of a chunk kept for a text cut in two by the pipe
CHUNK = 64 * 1024


def ending_in(data: bytes) -> str | None:
    """The first announcement of the job's end in `data`, as text; None if there is none."""
    found = [(data.find(e), e) for e in ENDINGS if e in data]
    return min(found)[1].decode() if found else None


class StderrRelay:
    """Copies mpirun's stderr to this process's, as it comes, and notes the first ending announced."""

    def __init__(self, source, target_fd: int = 2):
        self._fd = source.fileno()
        self._source = source  # kept open until the copy ends
        self._target = target_fd
        self.ending: str | None = None
        self.ended_at: float | None = None  # time.monotonic() of the announcement
        self._thread = threading.Thread(target=self._copy, name="mpirun-stderr", daemon=True)

    def start(self) -> StderrRelay:
        self._thread.start()
        return self

    def _copy(self) -> None:
        tail = b""
        try:
            while True:
                try:
                    data = os.read(self._fd, CHUNK)
                except InterruptedError:
                    continue
                if not data:
                    return  # every writer closed: mpirun and what it started
                self._write(data)
                if self.ending is None:
                    seen = ending_in(tail + data)
                    if seen is not None:
                        self.ending = seen
                        self.ended_at = time.monotonic()  # last: a reader that sees it sees `ending`
                    tail = (tail + data)[-_KEEP:]
        except OSError:
            return
        finally:
            self._source.close()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._target, view):]
            except InterruptedError:
                continue
            except OSError:
                return  # our stderr is gone; keep draining mpirun's so that it never blocks

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
