"""How `local run` ends, whichever backend ran the JobSet: the table `kubectl get jobset`
would print, the terminal condition's cause, and the exit code (0 Completed, 1 Failed,
EXIT_LOCAL_TIMEOUT for --timeout, EXIT_LOCAL_INTERRUPTED for Ctrl-C / SIGTERM)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import contract

# How a run ends when the JobSet reached no terminal state.
TIMEOUT = "timeout"
INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class ReplicatedJobCounts:
    name: str
    ready: int = 0
    succeeded: int = 0
    failed: int = 0
    active: int = 0


@dataclass(frozen=True)
class Result:
    name: str
    outcome: str | None  # the JobSet's terminal state, TIMEOUT, INTERRUPTED, or None
    terminal_state: str  # "" when the JobSet reached none
    restarts: int
    completed: bool
    suspended: bool
    age: float  # seconds since the run started
    rjobs: tuple[ReplicatedJobCounts, ...]
    reason: str = ""  # of the terminal condition
    message: str = ""

    def exit_code(self) -> int:
        if self.outcome == INTERRUPTED:
            return contract.EXIT_LOCAL_INTERRUPTED
        if self.outcome == TIMEOUT:
            return contract.EXIT_LOCAL_TIMEOUT
        return 0 if self.terminal_state == "Completed" else 1

    def lines(self) -> list[str]:
        """What the run prints last: a blank line, the JobSet's row, a row per replicated
        job, and the terminal condition's reason and message when it has one."""
        state = self.terminal_state or {TIMEOUT: "TimedOut", INTERRUPTED: "Interrupted"}.get(self.outcome or "", "")
        jobset = [("NAME", "TERMINALSTATE", "RESTARTS", "COMPLETED", "SUSPENDED", "AGE"),
                  (self.name, state, str(self.restarts), str(self.completed), str(self.suspended).lower(),
                   f"{self.age:.1f}s")]
        rjobs = [("REPLICATEDJOB", "READY", "SUCCEEDED", "FAILED", "ACTIVE"),
                 *((r.name, str(r.ready), str(r.succeeded), str(r.failed), str(r.active)) for r in self.rjobs)]
        out = ["", table(jobset), table(rjobs)]
        if self.message:
            out.append(f"{self.reason}: {self.message}")
        return out


def table(rows) -> str:
    """Columns left-aligned, three spaces apart, as kubectl prints them."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
