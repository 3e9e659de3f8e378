"""The coordinator's decisions, without sockets."""

import pytest

from jobset_runtime.group.state import ALL, GroupState, MemberId, Phase

WORLD = [MemberId(r, f"pod-{r}") for r in range(3)]


def hello(rank=0, attempt=1, pod=None):
    return {"t": "hello", "attempt": attempt, "epoch": 0, "rank": rank, "pod": pod or f"pod-{rank}"}


def running(attempt=1):
    s = GroupState(WORLD, attempt)
    for r in range(3):
        s.join(r)
    return s


def kinds(outs):
    return [(to, m["t"]) for to, m in outs]


def test_start_only_when_the_whole_world_joined():
    s = GroupState(WORLD, 1)
    assert s.join(0) == [] and s.join(2) == []
    assert s.missing() == [WORLD[1]]
    hb = s.heartbeat()
    assert hb["missing"] == [[1, "pod-1"]] and hb["n_missing"] == 1
    assert kinds(s.join(1)) == [(ALL, "start")]
    assert s.phase is Phase.RUNNING and "missing" not in s.heartbeat()


def test_admission():
    s = GroupState(WORLD, 1)
    assert s.admit(hello()) is None
    reason, retry = s.admit(hello(attempt=2))
    assert retry and "older" in reason
    reason, retry = s.admit(hello(attempt=0))
    assert not retry and "over" in reason
    assert s.admit(hello(rank=7))[0].startswith("rank 7 is not in")
    assert "belongs to pod pod-1" in s.admit(hello(rank=1, pod="pod-x"))[0]
    assert "already started" in running().admit(hello())[0]


def test_first_failure_is_named_later_ones_only_logged():
    s = running()
    outs = s.fail(2, 3, "boom", epoch=0)
    assert kinds(outs) == [(ALL, "abort")]
    assert outs[0][1] == {"t": "abort", "attempt": 1, "epoch": 0, "rank": 2, "pod": "pod-2",
                          "code": 3, "cause": "boom"}
    assert s.fail(0, 1, "me too", epoch=0) == []
    # A member leaving after the abort can never reach the restart barrier: the abort is repeated,
    # final, to those waiting there, once; and to any later arrival.  Nobody else hears it again
    # (every member that leaves would otherwise cost a broadcast).
    assert s.barrier(0, 0) == []
    assert s.leave(1, "gone") == [(0, outs[0][1])]
    assert s.leave(0, "gone") == []
    assert s.barrier(2, 0) == [(2, outs[0][1])]
    assert s.first.rank == 2 and "rank 2 (pod pod-2) failed first with exit code 3" in s.first.describe()


def test_drop_before_start_is_not_a_failure_after_start_it_is():
    s = GroupState(WORLD, 1)
    s.join(0)
    assert s.leave(0, "closed") == [] and s.phase is Phase.WAITING and s.missing()[0] == WORLD[0]
    s = running()
    outs = s.leave(1, "silent for more than 3 s")
    assert kinds(outs) == [(ALL, "abort")] and outs[0][1]["code"] is None and outs[0][1]["rank"] == 1


def test_finished_members_may_leave_and_all_done_completes():
    s = running()
    assert s.finish(0, 0) == [] and s.leave(0, "closed") == []
    assert s.phase is Phase.RUNNING
    assert s.finish(1, 0) == [] and kinds(s.finish(2, 0)) == [(ALL, "complete")]
    assert s.phase is Phase.COMPLETE


def test_barrier_restarts_in_place_and_old_epoch_messages_are_dropped():
    s = running()
    s.fail(0, 1, "boom", epoch=0)
    assert s.barrier(0, 0) == [] and s.barrier(1, 0) == []
    assert s.barrier(2, 5) == []  # wrong epoch: dropped
    outs = s.barrier(2, 0)
    assert kinds(outs) == [(ALL, "restart")] and outs[0][1]["epoch"] == 1
    assert s.phase is Phase.RUNNING and s.epoch == 1 and s.first is None
    assert s.fail(1, 9, "straggler from epoch 0", epoch=0) == [] and s.phase is Phase.RUNNING
    assert s.finish(1, 0) == [] and s.done == set()
    assert s.barrier(1, 1) == []  # no barrier without an abort
    assert kinds(s.fail(1, 9, "real", epoch=1)) == [(ALL, "abort")]


def test_barrier_cannot_complete_once_a_member_left():
    s = running()
    s.fail(0, 1, "boom", epoch=0)
    assert s.leave(2, "closed") == []  # nobody waits at the barrier yet
    # Each arrival hears the abort again instead of waiting for a barrier that cannot complete.
    assert kinds(s.barrier(0, 0)) == [(0, "abort")] and kinds(s.barrier(1, 0)) == [(1, "abort")]
    assert s.at_barrier == set() and s.phase is Phase.ABORTED


def test_world_must_be_nonempty_and_unique():
    with pytest.raises(ValueError):
        GroupState([], 0)
    with pytest.raises(ValueError):
        GroupState([MemberId(0, "a"), MemberId(0, "b")], 0)


def test_relay_mode_sends_collective_steps_up_and_waits_for_the_answer():
    from jobset_runtime.group.state import UP, Failure

    s = GroupState(WORLD, 1, relay=True)
    s.join(0)
    s.join(1)
    assert kinds(s.join(2)) == [(UP, "ready")] and s.phase is Phase.WAITING
    assert kinds(s.up_start()) == [(ALL, "start")] and s.phase is Phase.RUNNING
    up = s.fail(2, 5, "boom", epoch=0)
    assert kinds(up) == [(UP, "fail")] and (up[0][1]["origin_rank"], up[0][1]["origin_pod"]) == (2, "pod-2")
    assert s.fail(1, 6, "later", epoch=0) == []  # only the slice's first failure goes up
    other = Failure(7, "pod-7", 1, "another slice failed first")
    down = s.up_abort(other)
    assert kinds(down) == [(ALL, "abort")] and down[0][1]["rank"] == 7
    assert s.up_abort(other) == []  # repeated from above: passed on for those at the barrier (none yet)
    assert s.barrier(0, 0) == [] and s.barrier(1, 0) == [] and kinds(s.barrier(2, 0)) == [(UP, "barrier")]
    assert s.epoch == 0
    assert kinds(s.up_restart()) == [(ALL, "restart")] and s.epoch == 1 and s.up_restart() == []
    for r in (0, 1):
        s.finish(r, 1)
    assert kinds(s.finish(2, 1)) == [(UP, "done")] and s.phase is Phase.RUNNING
    assert kinds(s.up_complete()) == [(ALL, "complete")] and s.phase is Phase.COMPLETE


def test_flat_group_names_a_relayed_failure_by_its_origin():
    s = running()
    out = s.fail(0, 2, "in slice 0", epoch=0, origin=MemberId(17, "pod-17"))
    assert (out[0][1]["rank"], out[0][1]["pod"]) == (17, "pod-17")


@pytest.mark.parametrize("bound, relay, upstream_vouches, says", [
    (True, False, None, "all"),  # flat: every join was checked against its pod's DNS name
    (False, False, None, None),  # no address binding: nothing to vouch for
    (True, True, True, "all"),  # a slice leader: its slice checked, and the leaders' group vouched
    (True, True, False, None),  # ... but not for the other slices
    (False, True, True, None),
])
def test_the_start_says_every_name_resolved_only_when_every_join_was_checked(bound, relay, upstream_vouches, says):
    s = GroupState(WORLD, 1, relay=relay, bound=bound)
    outs = [o for r in range(3) for o in s.join(r)]
    if relay:
        assert kinds(outs) == [("up", "ready")]
        outs = s.up_start(upstream_vouches)
    assert kinds(outs) == [(ALL, "start")] and outs[0][1].get("dns") == says
