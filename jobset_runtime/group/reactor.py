"""One thread that drives the sockets and timers of any number of group members.

A wrapper's GroupMember gets a reactor of its own: one thread per pod, as a pod has one
member.  A process that hosts many members (bench/scale_group.py packs thousands of pods onto
one machine) hands them one reactor to share, so N members cost one thread and one select()
instead of N threads, each woken for every heartbeat.  The members run the same code either way.

Callbacks (socket readiness, timers, call_soon) run on the reactor's thread, one at a time,
and must not block; call_soon is the only method other threads may call.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import selectors
import socket
import threading
import time

log = logging.getLogger("jobset_runtime.group")


class Timer:
    __slots__ = ("when", "fn", "args", "cancelled")

    def __init__(self, when: float, fn, args):
        self.when, self.fn, self.args, self.cancelled = when, fn, args, False

    def cancel(self) -> None:
        self.cancelled = True


class Reactor:
    def __init__(self, name: str = "group-member"):
        self.name = name
        self._sel = selectors.DefaultSelector()
        self._timers: list = []  # heap of (when, seq, Timer); cancelled ones are skipped
        self._seq = itertools.count()
        self._pending: collections.deque = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, self._drain_wake)
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
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    def register(self, sock: socket.socket, events: int, callback) -> None:
        """callback(mask) when sock is ready for `events` (selectors.EVENT_READ | EVENT_WRITE)."""
        self._sel.register(sock, events, callback)

    def modify(self, sock: socket.socket, events: int, callback) -> None:
        self._sel.modify(sock, events, callback)

    def unregister(self, sock: socket.socket) -> None:
        try:
            self._sel.unregister(sock)
        except (KeyError, ValueError):
            pass

    def _drain_wake(self, mask) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _run(self) -> None:
        timers, pending = self._timers, self._pending
        try:
            while not self._stopping:
                if pending:
                    timeout = 0.0
                elif timers:
                    timeout = max(0.0, timers[0][0] - time.monotonic())
                else:
                    timeout = None
                for key, mask in self._sel.select(timeout):
                    self._call(key.data, mask)
                now = time.monotonic()
                while timers and timers[0][0] <= now:
                    timer = heapq.heappop(timers)[2]
                    if not timer.cancelled:
                        self._call(timer.fn, *timer.args)
                for _ in range(len(pending)):
                    fn, args = pending.popleft()
                    self._call(fn, *args)
        finally:
            self._close()

    def _close(self) -> None:
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    @staticmethod
    def _call(fn, *args) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("group: a member's callback failed")
