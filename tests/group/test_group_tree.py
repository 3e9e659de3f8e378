"""The two-level tree: members (processes) -> slice leaders -> the leaders' group."""

import asyncio
import logging
import signal
import threading

import pytest
from grouphelpers import WAIT, Proc, join_all, make_world, wait_until

from jobset_runtime.errors import PeersTimeout
from jobset_runtime.group import GroupMember, GroupServer, MemberId, MemberPhase, Phase
from jobset_runtime.group.member import GroupAborted
from jobset_runtime.group.state import Failure
from jobset_runtime.group.relay import SliceLeader

FAST = {"heartbeat": 0.2, "deadline": 1.5}
SLICES, PER_SLICE = 2, 3


@pytest.fixture(params=["own-loops", "shared-loop"])
def tree(request, token, token_file):
    """Leaders' server + one SliceLeader per slice in this process; members in their own processes.
    The slice servers run each on a loop of its own, or all on one shared loop (as a process hosting
    many leaders runs them)."""
    world = make_world(SLICES * PER_SLICE)
    leaders = [world[s * PER_SLICE] for s in range(SLICES)]
    top = GroupServer(bind=("127.0.0.1", 0), world=leaders, token=token, attempt=0, leaders=True, **FAST)
    top.start()
    loop = None
    if request.param == "shared-loop":
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
    slices = []
    procs = []
    try:
        for s in range(SLICES):
            sl = SliceLeader(bind=("127.0.0.1", 0), slice_world=world[s * PER_SLICE:(s + 1) * PER_SLICE],
                             upstream=top.address, me=leaders[s], leaders=leaders, token=token, attempt=0,
                             join_timeout=WAIT, barrier_timeout=WAIT, loop=loop, **FAST)
            sl.start()
            assert (sl.server._thread is None) == (loop is not None)
            slices.append(sl)
            for r in range(s * PER_SLICE, (s + 1) * PER_SLICE):
                procs.append(Proc("--port", sl.address[1], "--rank", r, "--first", s * PER_SLICE,
                                  "--world", PER_SLICE, "--token-file", token_file,
                                  "--heartbeat", FAST["heartbeat"], "--deadline", FAST["deadline"]))
        for p in procs:
            p.expect("joined")
        yield top, slices, procs
    finally:
        for p in procs:
            p.stop()
        for sl in slices:
            sl.stop()
        top.stop()
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)


def test_a_kill_in_one_slice_aborts_every_member_of_every_slice_naming_it(tree):
    top, slices, procs = tree
    procs[4].kill(signal.SIGKILL)
    for r, p in enumerate(procs):
        if r != 4:
            ev = p.expect("aborted")
            assert (ev["rank"], ev["pod"], ev["code"]) == (4, "pod-4", None)
    assert top.state.first == slices[1].server.state.first
    assert top.state.first.rank == 4


def test_restart_in_place_and_completion_through_the_tree(tree):
    top, slices, procs = tree
    procs[1].send("fail 3 epoch 0 fails")
    for p in procs:
        ev = p.expect("aborted")
        assert (ev["rank"], ev["code"], ev["cause"]) == (1, 3, "epoch 0 fails")
    for p in procs:
        p.send("barrier")
    for p in procs:
        assert p.expect("restarted")["epoch"] == 1
    assert top.epoch == 1 and all(sl.server.epoch == 1 for sl in slices)
    for p in procs:
        p.send("finish")
    for p in procs:
        assert p.expect("finished")["complete"] is True
    assert top.phase is Phase.COMPLETE


def test_a_lost_slice_leader_aborts_both_slices(tree):
    _, slices, procs = tree
    slices[1].stop()
    for p in procs[:PER_SLICE]:
        ev = p.expect("aborted")
        assert ev["rank"] == 3 and "connection lost" in ev["cause"]  # the leaders' group names leader 3
    for p in procs[PER_SLICE:]:
        assert p.expect("aborted")["rank"] is None  # their coordinator (the leader) vanished


def test_a_slice_waits_for_the_other_slices_before_it_starts(token):
    world = make_world(4)
    leaders = [world[0], world[2]]
    with (
        GroupServer(bind=("127.0.0.1", 0), world=leaders, token=token, attempt=0, leaders=True, **FAST) as top,
        SliceLeader(bind=("127.0.0.1", 0), slice_world=world[:2], upstream=top.address, me=world[0],
                    leaders=leaders, token=token, attempt=0, join_timeout=WAIT, **FAST) as sl,
    ):
        members = [GroupMember(server=sl.address, me=m, world=world[:2], token=token, attempt=0, **FAST)
                   for m in world[:2]]
        with pytest.raises(PeersTimeout, match="leaders' group is still missing"):
            join_all(members, timeout=1.0)
        assert top.state.missing() == [MemberId(2, "pod-2")]
        for m in members:
            m.close()


def test_a_slice_whose_leaders_group_never_restarts_aborts_after_its_barrier_timeout(token):
    """Slice 0 is all at the barrier, slice 1 never arrives: slice 0's leader gives up after its
    barrier_timeout and aborts its slice's barrier."""
    world = make_world(4)
    leaders = [world[0], world[2]]
    with (
        GroupServer(bind=("127.0.0.1", 0), world=leaders, token=token, attempt=0, leaders=True, **FAST) as top,
        SliceLeader(bind=("127.0.0.1", 0), slice_world=world[:2], upstream=top.address, me=world[0],
                    leaders=leaders, token=token, attempt=0, join_timeout=WAIT, barrier_timeout=1.0, **FAST) as a,
        SliceLeader(bind=("127.0.0.1", 0), slice_world=world[2:], upstream=top.address, me=world[2],
                    leaders=leaders, token=token, attempt=0, join_timeout=WAIT, barrier_timeout=WAIT, **FAST) as b,
    ):
        members = [GroupMember(server=(a if m.rank < 2 else b).address, me=m,
                               world=world[:2] if m.rank < 2 else world[2:], token=token, attempt=0, **FAST)
                   for m in world]
        try:
            join_all(members, timeout=WAIT)
            members[3].report_failure(9, "slice 1 fails")
            for m in members:
                assert m.aborted.wait(WAIT) and m.abort_cause.rank == 3
            outcomes = [None, None]

            def barrier(i):
                try:
                    outcomes[i] = members[i].restart_barrier(WAIT)
                except GroupAborted as e:
                    outcomes[i] = e.failure

            threads = [threading.Thread(target=barrier, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(WAIT)
            for failure in outcomes:  # aborted at the barrier (the slice repeats its first failure)
                assert isinstance(failure, Failure) and failure.rank == 3, failure
            assert a.server.epoch == 0 and top.epoch == 0
            assert a.up.phase is not MemberPhase.BARRIER  # the leader gave up waiting
        finally:
            for m in members:
                m.close()


def test_a_slice_that_says_ready_again_after_a_member_rejoins_joins_the_leaders_group_once(token, caplog):
    """The slice's members all join (ready goes up, the leader's upstream member waits for the
    other slice), one leaves and comes back (ready goes up a second time): the leader joins the
    leaders' group once, and the group starts when the other slice arrives."""
    world = make_world(4)
    leaders = [world[0], world[2]]
    errors = []
    previous_hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(args)  # an uncaught error in the leader's threads
    members = []
    try:
        with (
            GroupServer(bind=("127.0.0.1", 0), world=leaders, token=token, attempt=0, leaders=True, **FAST) as top,
            SliceLeader(bind=("127.0.0.1", 0), slice_world=world[:2], upstream=top.address, me=world[0],
                        leaders=leaders, token=token, attempt=0, join_timeout=WAIT, **FAST) as sl,
        ):
            def member(m):
                made = GroupMember(server=sl.address, me=m, world=world[:2], token=token, attempt=0, **FAST)
                members.append(made)
                made.start_join(WAIT)
                return made

            caplog.set_level(logging.INFO, logger="jobset_runtime.group")

            def readies():  # the slice state's log line each time it sends ready up
                return sum("members of the slice joined; waiting for the other slices" in r.getMessage()
                           for r in caplog.records)

            first, second = member(world[0]), member(world[1])
            wait_until(lambda: readies() == 1, "the slice's first ready")
            wait_until(lambda: top.state.joined == {0}, "the leader in the leaders' group")
            second.close()
            wait_until(lambda: 1 not in sl.server.state.joined, "the slice server to see member 1 leave")
            again = member(world[1])
            wait_until(lambda: readies() == 2, "the slice's second ready")
            other = GroupMember(server=top.address, me=world[2], world=leaders, token=token, attempt=0, **FAST)
            members.append(other)
            other.join(WAIT)  # the other slice's leader: the leaders' group starts
            for m in (first, again):
                wait_until(lambda: m.phase is MemberPhase.RUNNING, f"{m.me} to start")
            assert top.phase is Phase.RUNNING and sl.up.phase is MemberPhase.RUNNING
    finally:
        for m in members:
            m.close()
        threading.excepthook = previous_hook
    assert not errors, [f"{e.thread.name}: {e.exc_type.__name__}: {e.exc_value}" for e in errors]
