"""The coordinator's decisions, as a pure state machine.

Every event (a member joined, left, went silent, reported a failure, finished, reached
the restart barrier) goes in; the messages to send come out as `(to, msg)` pairs, `to`
being a rank or ALL.  The server (server.py) only moves bytes and clocks.

Phases of one attempt (the JobSet restart-attempt; a new attempt is a new server):

    WAITING --all of the world joined--> RUNNING --every member done--> COMPLETE
       |                                   |
       +--a member reports a failure-------+--failure / drop / silence--> ABORTED
                                                                             |
    RUNNING (epoch + 1) <--every member of the world at the barrier---------+

The first failure of an epoch is the cause every abort names; later ones are only
logged.  A member's message from another epoch is dropped, so a straggler from epoch k
cannot stop epoch k+1.

Relay mode (a slice leader in the two-level tree, relay.py): the collective steps (all
joined, a failure, all done, all at the barrier) go UP to the leaders' group instead of
being decided here, and the answer comes back through the up_* methods.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from ..log import one_line
from .wire import MAX_CAUSE

log = logging.getLogger("jobset_runtime.group")

ALL = "all"
UP = "up"  # relay mode: to the leaders' group


class Phase(str, enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    ABORTED = "aborted"
    COMPLETE = "complete"


@dataclass(frozen=True, order=True)
class MemberId:
    """One member of the group: a global rank and the pod (hostname) it runs in."""

    rank: int
    pod: str

    def __str__(self) -> str:
        return f"rank {self.rank} ({self.pod})"


@dataclass(frozen=True)
class Failure:
    """What failed first: the cause every member's abort names."""

    rank: int | None  # None: the coordinator itself
    pod: str
    code: int | None  # the child's exit code; None when the member vanished
    cause: str

    def describe(self) -> str:
        who = f"rank {self.rank} (pod {self.pod})" if self.rank is not None else f"the group coordinator ({self.pod})"
        code = f" with exit code {self.code}" if self.code is not None else ""
        return f"{who} failed first{code}: {self.cause}"

    def message(self, attempt: int, epoch: int) -> dict:
        return {"t": "abort", "attempt": attempt, "epoch": epoch, "rank": self.rank,
                "pod": self.pod, "code": self.code, "cause": self.cause}

    @classmethod
    def from_message(cls, msg: dict) -> Failure:
        return cls(msg["rank"], one_line(msg["pod"], 253), msg["code"], one_line(msg["cause"], MAX_CAUSE))


class GroupState:
    def __init__(self, world: list[MemberId], attempt: int, relay: bool = False, bound: bool = False):
        if not world:
            raise ValueError("the group's world is empty")
        self.world = {m.rank: m for m in world}
        if len(self.world) != len(world):
            raise ValueError("the group's world repeats a rank")
        self._ranks = sorted(self.world)
        self.attempt = attempt
        self.epoch = 0
        self.phase = Phase.WAITING
        self.joined: set[int] = set()
        self.done: set[int] = set()
        self.at_barrier: set[int] = set()
        self.first: Failure | None = None
        self.relay = relay
        self._aborted_down = False  # relay mode: the abort of this epoch went to the members
        self.left_after_abort = False  # someone left after the abort: no barrier can complete
        # Every join is bound to the address its pod's DNS name resolves to (server.py), so once
        # all have joined, every name of this world resolved: the start says so (dns="all"),
        # and a wrapper needs no DNS wait of its own for its peers (docs/peers.md).
        self.bound = bound

    def _msg(self, kind: str, **fields) -> dict:
        return {"t": kind, "attempt": self.attempt, "epoch": self.epoch, **fields}

    def missing(self, first: int | None = None) -> list[MemberId]:
        """The members not joined, in rank order (only the `first` few, when given)."""
        joined, out = self.joined, []
        for r in self._ranks:
            if r not in joined:
                out.append(self.world[r])
                if len(out) == first:
                    break
        return out

    # --- admission -------------------------------------------------------------
    def admit(self, hello: dict) -> tuple[str, bool] | None:
        """None to admit an authenticated hello, else (reason, whether retrying may help)."""
        if hello["attempt"] > self.attempt:
            reason = (f"the coordinator runs restart-attempt {self.attempt}, older than the "
                      f"member's {hello['attempt']}; it is being replaced")
            return reason, True
        if hello["attempt"] < self.attempt:
            return (f"restart-attempt {hello['attempt']} is over; the group runs attempt {self.attempt}", False)
        me = self.world.get(hello["rank"])
        if me is None:
            return (f"rank {hello['rank']} is not in the group's world of {len(self.world)}", False)
        if me.pod != hello["pod"]:
            return (f"rank {hello['rank']} belongs to pod {me.pod}, not {hello['pod']}", False)
        if self.phase is not Phase.WAITING:
            return (f"the group already started (phase {self.phase.value}, epoch {self.epoch})", False)
        return None

    # --- events ------------------------------------------------------------------
    def join(self, rank: int) -> list:
        self.joined.add(rank)
        if self.phase is Phase.WAITING and len(self.joined) == len(self.world):
            if self.relay:
                log.info("group: all %d members of the slice joined; waiting for the other slices", len(self.world))
                return [(UP, self._msg("ready"))]
            self.phase = Phase.RUNNING
            log.info("group: all %d members joined; start (attempt %d, epoch %d)",
                     len(self.world), self.attempt, self.epoch)
            return [(ALL, self._start(self.bound))]
        return []

    def fail(self, rank: int, code: int | None, cause: str, epoch: int | None = None,
             origin: MemberId | None = None) -> list:
        """A member reported its child's failure, or vanished (epoch None: always current).

        origin: the member a slice leader relays the failure of (rank is the leader's)."""
        if epoch is not None and epoch != self.epoch:
            log.warning("group: dropped a failure of %s from epoch %d (now %d)", self.world[rank], epoch, self.epoch)
            return []
        if self.phase in (Phase.ABORTED, Phase.COMPLETE):
            log.info("group: %s also failed (%s); the abort already names %s", self.world[rank], cause,
                     self.first.describe() if self.first else "the group's end")
            return []
        self.phase = Phase.ABORTED
        who = origin or self.world[rank]
        self.first = Failure(who.rank, who.pod, code, one_line(cause, MAX_CAUSE))
        self.at_barrier.clear()
        if self.relay:
            log.error("group: %s; telling the leaders' group", self.first.describe())
            return [(UP, {**self._msg("fail", code=code, cause=self.first.cause),
                          "origin_rank": who.rank, "origin_pod": who.pod})]
        log.error("group: abort: %s", self.first.describe())
        return [(ALL, self.first.message(self.attempt, self.epoch))]

    def leave(self, rank: int, cause: str) -> list:
        """A member's connection closed or went silent."""
        self.joined.discard(rank)
        self.at_barrier.discard(rank)
        if self.phase is Phase.RUNNING and rank not in self.done:
            return self.fail(rank, None, cause)
        if self.phase is Phase.ABORTED:
            # It cannot come back (admission is closed), so the restart barrier can never
            # complete: repeat the abort, which ends the wait of every member at the barrier.
            self.left_after_abort = True
            return self._repeat_abort()
        return []

    def _repeat_abort(self) -> list:
        """The epoch's abort again for the members waiting at the barrier, final for them.  Only for
        them, and once: the others are aborted already and get it when they arrive (barrier), so a
        group that shuts down after an abort costs one frame per member, not a broadcast per
        member that leaves (N^2 / 2 frames: 81 million for a flat 12,736)."""
        if not self.first:
            return []
        waiting, msg = sorted(self.at_barrier), self.first.message(self.attempt, self.epoch)
        self.at_barrier.clear()
        return [(rank, msg) for rank in waiting]

    def finish(self, rank: int, epoch: int) -> list:
        if epoch != self.epoch or self.phase is not Phase.RUNNING:
            return []
        self.done.add(rank)
        if len(self.done) == len(self.world):
            if self.relay:
                return [(UP, self._msg("done"))]
            self.phase = Phase.COMPLETE
            log.info("group: every member finished (epoch %d)", self.epoch)
            return [(ALL, self._msg("complete"))]
        return []

    def barrier(self, rank: int, epoch: int) -> list:
        if epoch != self.epoch or self.phase is not Phase.ABORTED:
            log.warning("group: dropped a barrier arrival of %s for epoch %d (now %d, %s)",
                        self.world[rank], epoch, self.epoch, self.phase.value)
            return []
        if self.left_after_abort:
            return [(rank, self.first.message(self.attempt, self.epoch))] if self.first else []
        self.at_barrier.add(rank)
        if len(self.at_barrier) == len(self.world):
            if self.relay:
                return [(UP, self._msg("barrier"))]
            return self.up_restart()
        return []

    # --- relay mode: answers from the leaders' group ---------------------------------
    def _start(self, names_resolved: bool) -> dict:
        return self._msg("start", dns="all") if names_resolved else self._msg("start")

    def up_start(self, names_resolved: bool = False) -> list:
        """names_resolved: the leaders' group vouched for every other slice's names."""
        if self.phase is not Phase.WAITING:
            return []
        self.phase = Phase.RUNNING
        log.info("group: every slice joined; start (attempt %d, epoch %d)", self.attempt, self.epoch)
        return [(ALL, self._start(self.bound and names_resolved))]

    def up_abort(self, failure: Failure) -> list:
        """The leaders' group aborted (or was lost): pass its first failure down, once per epoch."""
        if self.phase is Phase.COMPLETE:
            return []
        if self._aborted_down:
            # Again from above (a leader left the leaders' group after the abort): pass it on
            # for the members waiting at the barrier.
            return self._repeat_abort()
        self.phase = Phase.ABORTED
        self.first = failure
        self._aborted_down = True
        log.error("group: abort: %s", failure.describe())
        return [(ALL, failure.message(self.attempt, self.epoch))]

    def up_complete(self) -> list:
        if self.phase is not Phase.RUNNING:
            return []
        self.phase = Phase.COMPLETE
        return [(ALL, self._msg("complete"))]

    def up_restart(self) -> list:
        if self.phase is not Phase.ABORTED:
            return []
        self.epoch += 1
        self.phase = Phase.RUNNING
        self.first = None
        self.done.clear()
        self.at_barrier.clear()
        self._aborted_down = False
        self.left_after_abort = False
        log.info("group: every member at the barrier; restart in place as epoch %d", self.epoch)
        return [(ALL, self._msg("restart"))]

    def heartbeat(self) -> dict:
        hb = self._msg("hb")
        if self.phase is Phase.WAITING:
            # The first few by name and the count: not the whole list, sorted, on every heartbeat.
            hb["missing"] = [[m.rank, m.pod] for m in self.missing(5)]
            hb["n_missing"] = len(self.world) - len(self.joined)  # only the world's ranks join
        return hb
