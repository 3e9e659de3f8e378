"""One thread that drives the sockets and timers of any number of group members.

A wrapper's GroupMember gets a reactor of its own: one thread per pod, as a pod has one
member.  A process that hosts many members (bench/scale_group.py packs thousands of pods onto
one machine) hands them one reactor to share, so N members cost one thread and one epoll
instead of N threads, each woken for every heartbeat.  The members run the same code either way.

Callbacks (socket readiness, timers, call_soon) run on the reactor's thread, one at a time,
and must not block; call_soon is the only method other threads may call.

Sockets are watched with epoll directly (selectors where there is none): a member's
callback runs once per event and per frame, so the selectors layer (a key object per
registration, a lookup per call, a list of pairs per wake-up) is a share of each join.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import select
import selectors
import socket
import threading
import time

log = logging.getLogger("jobset_runtime.group")

# epoll's bits (the same numbers where there is none: the selectors poller translates them).
READ, WRITE = getattr(select, "EPOLLIN", 1), getattr(select, "EPOLLOUT", 4)
# An error or hang-up is reported as both readable and writable, as selectors does: the owner's
# next recv() or send() (or SO_ERROR while connecting) then says what happened.
_EITHER = READ | WRITE


class Timer:
    """A callback at a time on the monotonic clock; moved with Reactor.move, stopped with cancel."""

    __slots__ = ("when", "fn", "args", "cancelled", "_entry", "_due")

    def __init__(self, when: float, fn, args):
        self.when, self.fn, self.args, self.cancelled = when, fn, args, False
        self._entry = self._due = None  # the sequence number and time of its live heap entry

    def cancel(self) -> None:
        self.cancelled = True


class _SelectorPoller:
    """epoll's calls on a selectors.DefaultSelector, for systems without epoll."""

    def __init__(self):
        self._sel = selectors.DefaultSelector()

    def register(self, fd: int, events: int) -> None:
        self._sel.register(fd, self._events(events))

    def modify(self, fd: int, events: int) -> None:
        self._sel.modify(fd, self._events(events))

    def unregister(self, fd: int) -> None:
        self._sel.unregister(fd)

    def poll(self, timeout: float | None) -> list:
        return [(key.fd, (READ if got & selectors.EVENT_READ else 0) | (WRITE if got & selectors.EVENT_WRITE else 0))
                for key, got in self._sel.select(timeout)]

    @staticmethod
    def _events(events: int) -> int:
        return (selectors.EVENT_READ if events & READ else 0) | (selectors.EVENT_WRITE if events & WRITE else 0)

    def close(self) -> None:
        self._sel.close()


class Reactor:
    def __init__(self, name: str = "group-member"):
        self.name = name
        self._poller = select.epoll() if hasattr(select, "epoll") else _SelectorPoller()
        self._handlers: dict[int, object] = {}  # fd -> callback(mask)
        self._timers: list = []  # heap of (when, seq, Timer); an entry that is not its timer's live one is skipped
        self._seq = itertools.count()
        self._pending: collections.deque = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.register(self._wake_r, READ, self._drain_wake)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stopping = False

    # --- any thread ----------------------------------------------------------------------
    def start(self) -> Reactor:
        with self._start_lock:
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        return self

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def running(self) -> bool:
        """Its thread runs what call_soon() queues: started, not stopped (a stopped reactor's
        thread is gone, and a callback queued then would never run)."""
        thread = self._thread
        return thread is not None and not self._stopping and thread.is_alive()

    def on_thread(self) -> bool:
        return self._thread is threading.current_thread()

    def call_soon(self, fn, *args) -> None:
        self._pending.append((fn, args))
        if not self.on_thread():
            try:
                self._wake_w.send(b"\0")
            except (BlockingIOError, OSError):
                pass  # a wake-up is already queued (or the reactor is gone)

    def stop(self, timeout: float = 5.0) -> None:
        with self._start_lock:
            self._stopping = True
            started = self._thread is not None
        if not started:  # never ran: nothing else holds its descriptors
            self._close()
            return
        self.call_soon(lambda: None)
        if not self.on_thread():
            self._thread.join(timeout)

    # --- the reactor's thread ------------------------------------------------------------
    def call_later(self, delay: float, fn, *args) -> Timer:
        return self.call_at(time.monotonic() + delay, fn, *args)

    def call_at(self, when: float, fn, *args) -> Timer:
        timer = Timer(when, fn, args)
        self._file(timer, when)
        return timer

    def move(self, timer: Timer, when: float, fn, *args) -> None:
        """Re-arm `timer` (pending, fired or cancelled) to call fn(*args) at `when`.  A deadline
        that only moves later (a connection's stages) costs no heap entry: the entry it has comes
        up, finds the timer due later and is filed again once, at the time it then has."""
        timer.when, timer.fn, timer.args, timer.cancelled = when, fn, args, False
        if timer._entry is None or when < timer._due:
            self._file(timer, when)

    def _file(self, timer: Timer, when: float) -> None:
        seq = next(self._seq)
        timer._entry, timer._due = seq, when
        heapq.heappush(self._timers, (when, seq, timer))

    def register(self, sock: socket.socket, events: int, callback) -> None:
        """callback(mask) when sock is ready for `events` (READ | WRITE of this module)."""
        fd = sock.fileno()
        self._poller.register(fd, events)
        self._handlers[fd] = callback

    def modify(self, sock: socket.socket, events: int, callback) -> None:
        fd = sock.fileno()
        self._poller.modify(fd, events)
        self._handlers[fd] = callback

    def unregister(self, sock: socket.socket) -> None:
        """Before the socket is closed (its descriptor number is how it is known)."""
        fd = sock.fileno()
        if self._handlers.pop(fd, None) is not None:
            try:
                self._poller.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass

    def _drain_wake(self, mask) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _run(self) -> None:
        timers, pending, handlers, poll = self._timers, self._pending, self._handlers, self._poller.poll
        heappop, heappush, monotonic, seq = heapq.heappop, heapq.heappush, time.monotonic, self._seq
        try:
            while not self._stopping:
                if pending:
                    timeout = 0.0
                elif timers:
                    timeout = max(0.0, timers[0][0] - monotonic())
                else:
                    timeout = None
                for fd, mask in poll(timeout):
                    callback = handlers.get(fd)
                    if callback is None:  # unregistered by an earlier callback of this wake-up
                        continue
                    if mask & ~_EITHER:
                        mask |= _EITHER
                    try:
                        callback(mask)
                    except Exception:
                        log.exception("group: a member's callback failed")
                now = monotonic()
                while timers and timers[0][0] <= now:
                    when, entry, timer = heappop(timers)
                    if entry != timer._entry:  # an entry it had before it was moved earlier
                        continue
                    if timer.cancelled:
                        timer._entry = None  # none left: a move() files a new one
                        continue
                    if timer.when > when:  # moved later since it was filed
                        timer._entry, timer._due = next(seq), timer.when
                        heappush(timers, (timer.when, timer._entry, timer))
                        continue
                    timer._entry = None
                    self._call(timer.fn, *timer.args)
                for _ in range(len(pending)):
                    fn, args = pending.popleft()
                    self._call(fn, *args)
        finally:
            self._close()

    def _close(self) -> None:
        self._poller.close()
        self._wake_r.close()
        self._wake_w.close()

    @staticmethod
    def _call(fn, *args) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("group: a member's callback failed")
