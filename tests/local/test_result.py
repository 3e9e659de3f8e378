"""How `local run` ends, the same for both backends: the final table and the exit code."""

from jobset_runtime import contract
from jobset_runtime.local.result import INTERRUPTED, TIMEOUT, ReplicatedJobCounts, Result


def _result(outcome, state, **kw):
    return Result("demo", outcome, state, restarts=kw.pop("restarts", 0), completed=state == "Completed",
                  suspended=False, age=kw.pop("age", 1.25),
                  rjobs=(ReplicatedJobCounts("slice", ready=2, succeeded=2), ReplicatedJobCounts("coordinator")), **kw)


def test_the_table_is_what_kubectl_get_jobset_prints():
    assert _result("Failed", "Failed", restarts=1, reason="FailedJobs", message="job demo-slice-0 failed").lines() == [
        "",
        "NAME   TERMINALSTATE   RESTARTS   COMPLETED   SUSPENDED   AGE\n"
        "demo   Failed          1          False       false       1.2s",
        "REPLICATEDJOB   READY   SUCCEEDED   FAILED   ACTIVE\n"
        "slice           2       2           0        0\n"
        "coordinator     0       0           0        0",
        "FailedJobs: job demo-slice-0 failed",
    ]


def test_a_run_without_a_terminal_state_says_how_it_ended_and_no_cause():
    lines = _result(TIMEOUT, "").lines()
    assert lines[1].splitlines()[1].split()[:2] == ["demo", "TimedOut"] and len(lines) == 3
    assert _result(INTERRUPTED, "").lines()[1].splitlines()[1].split()[:2] == ["demo", "Interrupted"]


def test_exit_codes():
    assert _result("Completed", "Completed").exit_code() == 0
    assert _result("Failed", "Failed").exit_code() == 1
    assert _result(TIMEOUT, "").exit_code() == contract.EXIT_LOCAL_TIMEOUT == 124
    assert _result(INTERRUPTED, "").exit_code() == contract.EXIT_LOCAL_INTERRUPTED == 130
