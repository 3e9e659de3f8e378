"""The two-level tree: a slice leader between its slice's members and the leaders' group.

At 12,736 pods one coordinator cannot carry every heartbeat (docs/fail-fast.md, Scale).
So worker 0 of each slice runs a SliceLeader: a GroupServer in relay mode for its slice,
and a GroupMember of the leaders' group, whose GroupServer the coordinator pod hosts.
Members connect to their slice leader exactly as they would to the coordinator.

    slice member --- slice server (relay) === leader's upstream member --- leaders' server

The slice state decides nothing collective on its own: "all joined", a failure, "all
done" and "all at the barrier" go up (state.UP) and are turned here into the upstream
member's calls; the leaders' group's answers (start, abort, complete, restart) come back
through GroupServer.upstream.  Failures keep their origin's rank and pod all the way up
and down, so every member of every slice names the same first failure.  A lost leaders'
group aborts the slice like a lost coordinator.
"""

from __future__ import annotations

import logging
import threading

from ..errors import JobSetRuntimeError, PeersTimeout
from .member import GroupMember, MemberPhase
from .server import GroupServer
from .state import Failure, MemberId

log = logging.getLogger("jobset_runtime.group")


class SliceLeader:
    def __init__(self, *, bind: tuple[str, int] | str, slice_world: list[MemberId],
                 upstream: tuple[str, int] | str, me: MemberId, leaders: list[MemberId],
                 token: bytes | None, insecure: bool = False, attempt: int,
                 heartbeat: float = 0.5, deadline: float = 3.0,
                 join_timeout: float = 600.0, barrier_timeout: float = 600.0, known=None,
                 source: str | None = None, resolve=None, reactor=None, loop=None):
        """reactor: what drives the upstream member (member.py); loop: what runs the slice server
        (server.py); None: a thread of its own for each."""
        self.join_timeout, self.barrier_timeout = join_timeout, barrier_timeout
        self.up = GroupMember(server=upstream, me=me, world=leaders, token=token, insecure=insecure,
                              attempt=attempt, heartbeat=heartbeat, deadline=deadline, source=source,
                              resolve=resolve, reactor=reactor)
        self.server = GroupServer(bind=bind, world=slice_world, token=token, insecure=insecure,
                                  attempt=attempt, heartbeat=heartbeat, deadline=deadline, on_up=self._on_up,
                                  known=known, loop=loop)
        self.up.on_abort(lambda failure: self.server.upstream("abort", failure))
        # The epoch whose restart barrier the upstream member waits at, entered from the slice
        # server's loop (_barrier); the restart comes back through on_phase.
        self._barrier_epoch: int | None = None
        self.up.on_phase(self._up_phase)
        # Whether the upstream member's join was begun.  The slice says "ready" again when a member
        # leaves and rejoins before the leaders' group starts (the slice stays WAITING in relay
        # mode); the upstream member joins once per attempt.  Read and set on the slice server's loop.
        self._joining = False

    @property
    def address(self):
        return self.server.address

    def start(self) -> tuple[str, int]:
        return self.server.start()

    def stop(self) -> None:
        self.up.close()
        self.server.stop()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # Runs on the slice server's loop: anything that blocks goes to a thread.
    def _on_up(self, msg: dict) -> None:
        kind = msg["t"]
        if kind == "fail":
            # report_failure() does not block (the upstream member's reactor sends it): called
            # here, not from a new thread, as a thread's start is the slowest step of the relay.
            self.up.report_failure(msg["code"], msg["cause"], MemberId(msg["origin_rank"], msg["origin_pod"]))
            return
        if kind == "barrier":
            self._barrier()
            return
        if kind == "ready":
            if self._joining:
                log.info("group: the slice is ready again (a member rejoined); its leader has joined already")
                return
            self._joining = True
        step = {"ready": self._join, "done": self._finish}[kind]
        threading.Thread(target=step, daemon=True, name=f"slice-leader-{kind}").start()

    def _lost(self, e: JobSetRuntimeError) -> None:
        host, port = self.up.server
        failure = getattr(e, "failure", None) or Failure(None, f"{host}:{port}", None, str(e))
        self.server.upstream("abort", failure)

    def _join(self) -> None:
        try:
            self.up.join(self.join_timeout)
        except JobSetRuntimeError as e:
            self._lost(e)
            return
        self.server.upstream("start", names_resolved=self.up.names_resolved)

    def _finish(self) -> None:
        try:
            complete = self.up.finish(None)
        except JobSetRuntimeError as e:
            self._lost(e)
            return
        if complete:
            self.server.upstream("complete")
        # else: the abort arrives through on_abort

    def _barrier(self) -> None:
        """The whole slice is at the restart barrier (on the slice server's loop).  The upstream
        member has normally heard the abort already: it enters the barrier at once, without a
        thread, and _up_phase passes the restart down.  Else the blocking wait, in a thread."""
        up = self.up
        if up.phase is MemberPhase.ABORTED:
            self._barrier_epoch = epoch = up.epoch  # set first: the restart may come back at once
            try:
                up.enter_barrier()
            except RuntimeError:  # no longer aborted (a restart or a close came meanwhile)
                self._barrier_epoch = None
            except JobSetRuntimeError as e:
                self._barrier_epoch = None
                self._lost(e)
                return
            else:
                self.server.call_later(self.barrier_timeout, self._barrier_timed_out, epoch)
                return
        threading.Thread(target=self._barrier_wait, daemon=True, name="slice-leader-barrier").start()

    def _barrier_wait(self) -> None:
        try:
            self.up.restart_barrier(self.barrier_timeout)
        except JobSetRuntimeError as e:
            self._lost(e)
            return
        self.server.upstream("restart")

    def _up_phase(self, up: GroupMember) -> None:
        # On the upstream member's thread, after each phase it reaches.
        epoch = self._barrier_epoch
        if epoch is not None and up.phase is MemberPhase.RUNNING and up.epoch == epoch + 1:
            self._barrier_epoch = None
            self.server.upstream("restart")

    def _barrier_timed_out(self, epoch: int) -> None:
        # On the slice server's loop: what restart_barrier() does when the wait runs out.
        if self._barrier_epoch != epoch or self.up.phase is not MemberPhase.BARRIER:
            return
        self._barrier_epoch = None
        e = PeersTimeout(f"restart barrier for epoch {epoch + 1}: not every group member arrived "
                         f"within {self.barrier_timeout:g} s")
        threading.Thread(target=lambda: (self.up.close(), self._lost(e)), daemon=True).start()
