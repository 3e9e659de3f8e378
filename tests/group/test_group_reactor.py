"""The members' reactor (group/reactor.py): timers moved in place, sockets on epoll, real sockets."""

import socket
import threading
import time

import pytest

from jobset_runtime.group import reactor as reactor_mod
from jobset_runtime.group.reactor import READ, WRITE, Reactor

WAIT = 10.0  # upper bound for any one awaited event; never a timing assertion


@pytest.fixture
def reactor():
    r = Reactor("test").start()
    yield r
    r.stop()


def on_thread(r: Reactor, fn):
    """fn() on the reactor's thread (timers and sockets are touched there only); its result."""
    done, out = threading.Event(), {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # handed back to the test's thread
            out["error"] = e
        done.set()

    r.call_soon(run)
    assert done.wait(WAIT)
    if "error" in out:
        raise out["error"]
    return out.get("value")


class Calls:
    def __init__(self):
        self.cond = threading.Condition()
        self.got = []

    def __call__(self, *args):
        with self.cond:
            self.got.append((time.monotonic(), args))
            self.cond.notify_all()

    def wait(self, n):
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.got) >= n, WAIT), self.got
        return self.got


def test_a_timer_moved_later_fires_once_at_its_new_time_without_a_new_heap_entry(reactor):
    calls = Calls()
    t0 = time.monotonic()

    def arm():
        timer = reactor.call_at(t0 + 0.05, calls, "first")
        reactor.move(timer, t0 + 0.3, calls, "moved")
        reactor.move(timer, t0 + 0.4, calls, "moved again")
        return timer, len(reactor._timers)

    timer, entries = on_thread(reactor, arm)
    assert entries == 1  # one heap entry however often a deadline moves later
    (at, args), = calls.wait(1)
    assert args == ("moved again",) and at >= t0 + 0.4
    time.sleep(0.2)
    assert len(calls.got) == 1  # the entry re-filed at the new time fired once, and nothing else


def test_a_timer_moved_earlier_fires_at_the_earlier_time_and_only_once(reactor):
    calls = Calls()
    t0 = time.monotonic()

    def fired(label):
        calls(label, len(reactor._timers))

    def arm():
        timer = reactor.call_at(t0 + 0.4, fired, "late")
        reactor.move(timer, t0 + 0.05, fired, "early")
        return timer

    on_thread(reactor, arm)
    (_, args), = calls.wait(1)
    # Fired from its new entry, the one it had before still filed (and skipped when it comes up).
    assert args == ("early", 1)
    time.sleep(0.6)
    assert [a for _, a in calls.got] == [("early", 1)]


def test_a_fired_or_cancelled_timer_can_be_armed_again(reactor):
    calls = Calls()
    timer = on_thread(reactor, lambda: reactor.call_later(0.01, calls, 1))
    calls.wait(1)
    on_thread(reactor, lambda: reactor.move(timer, time.monotonic() + 0.01, calls, 2))
    calls.wait(2)

    def cancel_then_rearm():
        timer.cancel()
        reactor.move(timer, time.monotonic() + 0.05, calls, 3)

    on_thread(reactor, cancel_then_rearm)
    calls.wait(3)
    # Cancelled, and its time passed (its heap entry is gone): armed again, for later than that.
    def arm_then_cancel(label):
        reactor.move(timer, time.monotonic() + 0.05, calls, label)
        timer.cancel()

    on_thread(reactor, lambda: arm_then_cancel("never"))
    time.sleep(0.2)
    on_thread(reactor, lambda: reactor.move(timer, time.monotonic() + 0.1, calls, 3.5))
    calls.wait(4)
    on_thread(reactor, lambda: arm_then_cancel("cancelled"))
    time.sleep(0.3)
    assert [a for _, a in calls.got] == [(1,), (2,), (3,), (3.5,)]


def test_a_failed_connect_wakes_a_socket_watched_for_writing_as_both_readable_and_writable(reactor):
    """epoll reports a refused connection as an error and hang-up (not only EPOLLOUT); the callback
    sees READ and WRITE, as selectors would have shown it, so either its recv() or SO_ERROR tells."""
    with socket.create_server(("127.0.0.1", 0)) as closed:
        address = closed.getsockname()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    calls = Calls()

    def watch():
        sock.connect_ex(address)
        reactor.register(sock, WRITE, calls)

    try:
        on_thread(reactor, watch)
        (_, (mask,)), *_ = calls.wait(1)
        assert mask & READ and mask & WRITE, mask
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
    finally:
        on_thread(reactor, lambda: reactor.unregister(sock))
        sock.close()


def test_sockets_registered_modified_and_unregistered(reactor):
    a, b = socket.socketpair()
    a.setblocking(False)
    calls = Calls()
    try:
        on_thread(reactor, lambda: reactor.register(a, READ, calls))
        b.send(b"x")
        (_, (mask,)), *_ = calls.wait(1)
        assert mask & READ
        assert a.recv(10) == b"x"
        # Writable at once: the callback runs for WRITE after the change.
        on_thread(reactor, lambda: reactor.modify(a, READ | WRITE, calls))
        got = calls.wait(len(calls.got) + 1)
        assert got[-1][1][0] & WRITE
        on_thread(reactor, lambda: reactor.unregister(a))
        n = len(calls.got)
        b.send(b"y")
        time.sleep(0.2)
        assert len(calls.got) == n  # no longer watched
        on_thread(reactor, lambda: reactor.unregister(a))  # twice: harmless
    finally:
        a.close()
        b.close()


def test_the_selectors_poller_answers_as_epoll_does():
    """Where there is no epoll, the reactor polls through selectors with the same four calls."""
    poller = reactor_mod._SelectorPoller()
    a, b = socket.socketpair()
    try:
        poller.register(a.fileno(), READ)
        assert poller.poll(0) == []
        b.send(b"x")
        assert [(fd, mask & READ) for fd, mask in poller.poll(WAIT)] == [(a.fileno(), READ)]
        poller.modify(a.fileno(), WRITE)
        assert [(fd, bool(mask & WRITE)) for fd, mask in poller.poll(WAIT)] == [(a.fileno(), True)]
        poller.unregister(a.fileno())
        assert poller.poll(0) == []
    finally:
        poller.close()
        a.close()
        b.close()
