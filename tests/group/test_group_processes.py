"""The group channel end to end: real TCP on loopback, each member in its own process."""

import signal

import pytest
from grouphelpers import Proc


@pytest.fixture
def procs():
    started = []
    yield started
    for p in started:
        p.stop()


def start_group(procs, token_file, n, *, coordinator_process=False, **opts):
    """A group of n members; rank 0's process also hosts the server."""
    extra = [f"--{k.replace('_', '-')}={v}" for k, v in opts.items()]
    auth = ["--token-file", token_file]
    coord = Proc("--serve", "--rank", 0, "--world", n, *auth, *extra)
    procs.append(coord)
    port = coord.expect("listening")["port"]
    for r in range(1, n):
        procs.append(Proc("--port", port, "--rank", r, "--world", n, *auth, *extra))
    for p in procs:
        p.expect("joined")
    return procs


def test_kill9_of_a_member_aborts_every_other_member_naming_it(procs, token_file):
    group = start_group(procs, token_file, 4)
    group[2].kill(signal.SIGKILL)
    for r in (0, 1, 3):
        ev = group[r].expect("aborted")
        assert (ev["rank"], ev["pod"], ev["code"]) == (2, "pod-2", None)
        assert "connection lost" in ev["cause"]


def test_a_failing_child_is_named_with_its_exit_code(procs, token_file):
    group = start_group(procs, token_file, 3)
    group[1].send("fail 7 loss is NaN at step 3")
    for p in group:
        ev = p.expect("aborted")
        assert (ev["rank"], ev["pod"], ev["code"], ev["cause"]) == (1, "pod-1", 7, "loss is NaN at step 3")


def test_the_coordinator_process_killed_aborts_every_member(procs, token_file):
    group = start_group(procs, token_file, 3)
    group[0].kill(signal.SIGKILL)
    for p in group[1:]:
        ev = p.expect("aborted")
        assert ev["rank"] is None and "lost the group coordinator" in ev["cause"]


def test_a_silent_member_is_detected_by_its_heartbeat_deadline(procs, token_file):
    group = start_group(procs, token_file, 3, heartbeat=0.1, deadline=1.0)
    group[1].kill(signal.SIGSTOP)  # a vanished node: no FIN, no RST, just silence
    try:
        for r in (0, 2):
            ev = group[r].expect("aborted")
            assert ev["rank"] == 1 and "silent" in ev["cause"]
    finally:
        group[1].kill(signal.SIGCONT)


def test_a_frozen_coordinator_is_detected_by_members(procs, token_file):
    group = start_group(procs, token_file, 3, heartbeat=0.1, deadline=1.0)
    group[0].kill(signal.SIGSTOP)
    try:
        for p in group[1:]:
            ev = p.expect("aborted")
            assert ev["rank"] is None and "no word from the coordinator" in ev["cause"]
    finally:
        group[0].kill(signal.SIGCONT)


def test_restart_in_place_meets_at_a_barrier_and_moves_to_the_next_epoch(procs, token_file):
    group = start_group(procs, token_file, 3)
    for epoch in (0, 1):
        group[epoch + 1].send(f"fail 1 fails on epoch {epoch}")
        for p in group:
            assert p.expect("aborted")["epoch"] == epoch
        for p in group:
            p.send("barrier")
        for p in group:
            assert p.expect("restarted")["epoch"] == epoch + 1
    for p in group:
        p.send("finish")
    for p in group:
        assert p.expect("finished")["complete"] is True
