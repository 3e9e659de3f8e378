"""A member that leaves after an abort ends the restart barrier for everyone at once."""

import threading

from grouphelpers import WAIT, join_all, make_world

from jobset_runtime.group import GroupAborted, GroupMember, GroupServer

FAST = {"heartbeat": 0.2, "deadline": 1.5}
TOKEN = b"a-barrier-test-token-0123456789"


def test_a_member_leaving_after_the_abort_ends_the_barrier_without_waiting_for_its_deadline():
    world = make_world(3)
    with GroupServer(bind=("127.0.0.1", 0), world=world, token=TOKEN, attempt=0, **FAST) as server:
        members = [GroupMember(server=server.address, me=m, world=world, token=TOKEN, attempt=0, **FAST)
                   for m in world]
        join_all(members)
        members[1].report_failure(3, "boom")
        for m in members:
            assert m.aborted.wait(WAIT)
        outcome = {}

        def at_barrier(m):
            try:
                m.restart_barrier(timeout=60)  # a timeout would raise PeersTimeout instead
                outcome[m.me.rank] = "restarted"
            except GroupAborted as e:
                outcome[m.me.rank] = e.failure.rank

        waiters = [threading.Thread(target=at_barrier, args=(m,)) for m in members[:2]]
        for t in waiters:
            t.start()
        members[2].close()  # e.g. its pod got SIGTERM: it will not come back
        for t in waiters:
            t.join(WAIT)
        for m in members:
            m.close()
    # Both left the barrier with the abort that names the first failure, not at its deadline.
    assert outcome == {0: 1, 1: 1}


def test_everyone_at_the_barrier_restarts():
    n = 3
    world = make_world(n)
    with GroupServer(bind=("127.0.0.1", 0), world=world, token=TOKEN, attempt=0, **FAST) as server:
        members = [GroupMember(server=server.address, me=m, world=world, token=TOKEN, attempt=0, **FAST)
                   for m in world]
        join_all(members)
        members[0].report_failure(1, "boom")
        epochs = []
        threads = [threading.Thread(target=lambda m=m: epochs.append(m.restart_barrier(WAIT))) for m in members]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        for m in members:
            m.close()
    assert epochs == [1] * n


def test_only_a_slice_leader_may_name_another_rank_as_the_failure():
    """A flat group's member that blames another rank is cut off, and so is itself the failure."""
    from jobset_runtime.group import MemberId

    world = make_world(3)
    with GroupServer(bind=("127.0.0.1", 0), world=world, token=TOKEN, attempt=0, **FAST) as server:
        members = [GroupMember(server=server.address, me=m, world=world, token=TOKEN, attempt=0, **FAST)
                   for m in world]
        join_all(members)
        members[0].report_failure(1, "it was rank 2", origin=MemberId(2, "pod-2"))
        for m in members[1:]:
            assert m.aborted.wait(WAIT)
            assert m.abort_cause.rank == 0, m.abort_cause.describe()
        for m in members:
            m.close()


def test_members_sharing_one_reactor_start_abort_and_restart_in_place_on_its_one_thread():
    """Many members of one process on one reactor (group/reactor.py), driven without blocking as the
    scale bench drives them: start_join, then enter_barrier from the abort; the group restarts in place."""
    from jobset_runtime.group import MemberPhase
    from jobset_runtime.group.reactor import Reactor

    n = 24
    world = make_world(n)
    reactor = Reactor("shared")
    running, aborted = threading.Condition(), {}
    epochs = {}

    def supervise(m):
        with running:
            if m.phase is MemberPhase.RUNNING:
                epochs[m.me.rank] = m.epoch
            elif m.phase is MemberPhase.ABORTED:
                aborted[m.me.rank] = m.abort_cause.rank
                m.enter_barrier()
            running.notify_all()

    threads_before = threading.active_count()
    with GroupServer(bind=("127.0.0.1", 0), world=world, token=TOKEN, attempt=0, **FAST) as server:
        members = [GroupMember(server=server.address, me=m, world=world, token=TOKEN, attempt=0,
                               reactor=reactor, **FAST) for m in world]
        for m in members:
            m.on_phase(supervise)
            m.start_join(WAIT)
        with running:
            assert running.wait_for(lambda: len(epochs) == n and set(epochs.values()) == {0}, WAIT)
        # One thread for all of them (the server's is the other one started here).
        assert threading.active_count() == threads_before + 2
        members[5].report_failure(9, "boom")
        with running:
            assert running.wait_for(lambda: len(aborted) == n and set(epochs.values()) == {1}, WAIT)
        assert set(aborted.values()) == {5}
        for m in members:
            m.close()
    reactor.stop()
    assert all(m.phase is MemberPhase.CLOSED for m in members)
