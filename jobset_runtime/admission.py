"""Who may start a handshake, on every port that listens: the group coordinator and the slice
leaders (group/server.py) and the MPI worker (mpi/worker.py); and how a client that was
turned away comes back (clients' backoff).

Anyone who can reach a port can open connections to it, and until its handshake ends an
unauthenticated connection costs a descriptor and a task or thread.  So, as sshd's
MaxStartups does, and one step further (known pods):

* a handshake has one total deadline (`Limits.deadline`), not one per read: a client that
  sends a byte now and then is cut off all the same;
* at most `per_source` handshakes at once from one address that is not a known pod's;
* once unknown addresses hold `early_drop` of their share, each new one is dropped with a
  probability rising linearly from `early_rate` to 1 at the share's end: clients that
  reconnect at once cannot keep every slot, and a member that retries with backoff gets in;
* known pods (their DNS names resolved in the background, or an address that authenticated
  before) skip the per-source cap and the random drop, and only they may use the last
  `reserved` slots;
* refusals are counted and reported as one warning per `WARN_EVERY` seconds, never one each;
* the descriptor soft limit is raised to the hard limit, and running out of descriptors at
  accept() pauses accepting (doubling up to `MAX_PAUSE`) instead of failing in a loop.

Pure bookkeeping in Gate and RefusalLog (clock and randomness injected); I/O only in
KnownPods (DNS), raise_nofile_limit and accept_backoff.
"""

from __future__ import annotations

import errno
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable  # not typing: a costly import on the wrapper's start
from dataclasses import dataclass

log = logging.getLogger("jobset_runtime.admission")

WARN_EVERY = 10.0  # seconds between two aggregated refusal warnings
MAX_PAUSE = 2.0  # longest pause of accept() after running out of descriptors
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass(frozen=True)
class Limits:
    total: int = 128  # handshakes under way at once, all sources together
    per_source: int = 8  # from one address that is not a known pod's
    reserved: int = 32  # of `total`, the slots only known pods may take
    early_drop: float = 0.5  # random early drop starts at this fraction of the unknown share
    early_rate: float = 0.3  # ... with this probability, rising to 1 at the share's end
    deadline: float = 5.0  # seconds for a whole handshake

    @classmethod
    def for_members(cls, n: int, deadline: float = 5.0) -> Limits:
        """Room for every member of a group of n to handshake at once, and as much again."""
        total = max(cls.total, 2 * n)
        return cls(total=total, reserved=max(cls.reserved, n), deadline=deadline)


class Gate:
    """Counts the handshakes under way by source address and decides on each new one.

    admit() returns None (go ahead; call release() when the handshake ends, however it
    ends) or the reason for refusing.  Thread-safe: the MPI worker serves from threads.
    """

    def __init__(self, limits: Limits = Limits(), known: Callable[[str], bool] = lambda addr: False,
                 rng: Callable[[], float] = random.random):
        self.limits, self._known, self._rng = limits, known, rng
        self._lock = threading.Lock()
        self._by_source: Counter = Counter()
        self._learned: set[str] = set()
        self.under_way = 0

    def known(self, addr: str) -> bool:
        return addr in self._learned or self._known(addr)

    def learn(self, addr: str) -> None:
        """This address proved the token once: admit it as a known pod from now on."""
        with self._lock:
            self._learned.add(addr)

    def admit(self, addr: str) -> str | None:
        lim = self.limits
        known = self.known(addr)
        with self._lock:
            if self.under_way >= lim.total:
                return "every handshake slot is taken"
            if not known:
                share = lim.total - lim.reserved
                if self._by_source[addr] >= lim.per_source:
                    return f"{lim.per_source} handshakes from this address are already under way"
                if self.under_way >= share:
                    return "the slots left are reserved for known pods"
                start = lim.early_drop * share
                if self.under_way >= start:
                    p = lim.early_rate + (1 - lim.early_rate) * (self.under_way - start) / max(1.0, share - start)
                    if self._rng() < p:
                        return "dropped early: most handshake slots are taken"
            self.under_way += 1
            self._by_source[addr] += 1
        return None

    def crowded(self) -> bool:
        """As many handshakes under way as the point where unknown addresses start being dropped
        at random: a listener that accepts in batches takes one per turn of its loop from here,
        so that the handshakes under way can finish (and give their slots back) in between."""
        lim = self.limits
        return self.under_way >= lim.early_drop * (lim.total - lim.reserved)

    def release(self, addr: str) -> None:
        with self._lock:
            self.under_way -= 1
            self._by_source[addr] -= 1
            if self._by_source[addr] <= 0:
                del self._by_source[addr]


class RefusalLog:
    """Refused connections, reported as one warning per `every` seconds:
    "refused 4,812 unauthenticated connections from 3 addresses in the last 10 s (...)"."""

    def __init__(self, what: str, every: float = WARN_EVERY, clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger = log, noun: str = "unauthenticated connection"):
        self.what, self.every, self._clock, self._log, self.noun = what, every, clock, logger, noun
        self._lock = threading.Lock()
        self._since = clock()
        self._sources: set[str] = set()
        self._reasons: Counter = Counter()
        self.total = 0  # every refusal so far (tests and benchmarks read it)

    def note(self, addr: str | None, reason: str) -> None:
        """One refusal; addr None when there is no peer to name (accept() itself failed)."""
        with self._lock:
            self.total += 1
            if addr:
                self._sources.add(addr)
            self._reasons[reason] += 1
        self.flush_due()

    def flush_due(self, force: bool = False) -> str | None:
        """Log (and return) the summary once `every` seconds have passed since the last one
        (force: now, as the listener closes)."""
        with self._lock:
            now = self._clock()
            if not self._reasons or (now - self._since < self.every and not force):
                if not self._reasons:
                    self._since = now
                return None
            n, sources, reasons = sum(self._reasons.values()), len(self._sources), self._reasons.most_common(3)
            span = now - self._since
            self._since, self._sources, self._reasons = now, set(), Counter()
        why = "; ".join(f"{reason}: {count:,}" for reason, count in reasons)
        line = (f"{self.what}: refused {n:,} {self.noun}{'s' if n != 1 else ''} from "
                f"{sources:,} address{'es' if sources != 1 else ''} in the last {span:.0f} s ({why})")
        self._log.warning("%s", line)
        return line


def _canonical(addr: str) -> str:
    import ipaddress

    try:
        return ipaddress.ip_address(addr).compressed
    except ValueError:
        return addr


class KnownPods:
    """The addresses of the pods a listener expects, from their DNS names, resolved in a
    background thread until every name has an address (and again on request).

    on_claim=True: a name is asked for only when its pod claims it (refresh(pod), on a join
    that could not be checked yet), never ahead: one query per pod when its record is there by
    the time it connects, as it is for a running pod, and no NXDOMAIN asked for early that a
    caching resolver would keep (docs/peers.md, DNS load).  Its addresses are then known only
    once their pods have connected, so admission treats a first connection as unknown.

    own: {pod: address} of the listener's own pod, known without DNS (status.podIP): a claim
    of it from that address needs no query, and its name is checked by those who ask for it to
    reach this listener."""

    def __init__(self, names: dict[str, str], nameservers=None, retry_s: float = 2.0, on_claim: bool = False,
                 family: str = "auto", own: dict[str, str] | None = None):
        """names: pod -> DNS name to resolve; family: the pods' address family (peers.family_of)."""
        self._names, self._nameservers, self.retry_s = dict(names), nameservers, retry_s
        self._family = family
        self.on_claim = on_claim
        # In the form a peer's address has at accept() (an IPv6 pod IP written another way would
        # never match its own member's connection).
        self._own = {pod: _canonical(addr) for pod, addr in (own or {}).items() if addr}
        self._claimed: set[str] = set()
        self._asking: set[str] = set()  # pods whose lookup is under way
        self._waiters: dict[str, list] = {}  # pod -> what to call once its name was asked for
        self._by_pod: dict[str, str] = dict(self._own)
        self._addresses: set[str] = set(self._own.values())
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, addr: str) -> bool:
        return addr in self._addresses

    def address_of(self, pod: str) -> str | None:
        return self._by_pod.get(pod)

    def refresh(self, pod: str | None = None) -> None:
        """Resolve again soon (a pod's address changed, or a name was late)."""
        if pod is not None and pod not in self._own:
            with self._lock:
                self._by_pod.pop(pod, None)
                if pod in self._names:
                    self._claimed.add(pod)
        self._wake.set()

    def claim(self, pod: str, then: Callable[[], None]) -> None:
        """Ask for `pod`'s name now (again, if it had an address) and call then(), from the resolving
        thread, once the answer (or none) is in: a listener checks a claim against the answer
        instead of turning the pod away until it is known.  A claim made while the same pod's
        lookup is under way is answered by that lookup, not by another query."""
        with self._lock:
            if pod in self._names and pod not in self._own:
                if pod not in self._asking:
                    self._by_pod.pop(pod, None)
                    self._claimed.add(pod)
                self._waiters.setdefault(pod, []).append(then)
                pod = None
        if pod is not None:  # its own pod, or not a name this listener knows: nothing to ask
            then()
        self._wake.set()

    def start(self) -> KnownPods:
        self._thread = threading.Thread(target=self._run, name="known-pods", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        from .errors import JobSetRuntimeError
        from .peers import resolve_lone

        while not self._stop.is_set():
            self._wake.clear()  # before reading the claims: one made from now on wakes the wait below
            with self._lock:
                claimed, self._claimed = self._claimed, set()
                if self.on_claim:
                    todo = {pod: self._names[pod] for pod in claimed if pod not in self._by_pod}
                else:
                    todo = {pod: name for pod, name in self._names.items() if pod not in self._by_pod}
                # Claimed again after an answer came: that answer is theirs (a pod known meanwhile).
                answered = [cb for pod in claimed if pod not in todo for cb in self._waiters.pop(pod, ())]
                self._asking = set(todo)
            self._call(answered)
            waiters = []
            if todo:
                try:
                    got = resolve_lone(list(todo.values()), self._nameservers, family=self._family).resolved
                except (JobSetRuntimeError, OSError) as e:
                    log.debug("known pods: cannot resolve: %s", e)
                    got = {}
                with self._lock:
                    for pod, name in todo.items():
                        if name in got:
                            self._by_pod[pod] = got[name]
                    self._addresses = set(self._by_pod.values())
                    # Every claim made before or while its pod's name was asked for gets this answer.
                    waiters = [cb for pod in todo for cb in self._waiters.pop(pod, ())]
                    self._asking = set()
            self._call(waiters)
            # On claim: the pod's next claim (after its backoff) asks again, nothing else does.
            self._wake.wait(self.retry_s if todo and not self.on_claim else None)

    @staticmethod
    def _call(waiters) -> None:
        for then in waiters:
            try:
                then()
            except Exception:
                log.exception("known pods: a waiter failed")


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft descriptor limit to the hard one (what a pod may use); returns (soft, hard)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.debug("cannot raise the open-file limit from %d to %d: %s", soft, hard, e)
    return soft, hard


def accept_backoff(pause: float) -> float:
    """The next pause after accept() ran out of descriptors again (the first is 50 ms)."""
    return min(MAX_PAUSE, max(0.05, pause * 2))


def out_of_resources(e: OSError) -> bool:
    return e.errno in RESOURCE_ERRNOS


# --- the client's side ------------------------------------------------------------------

# The clients' backoff (first wait, longest wait, jitter; seconds), exponential with jitter as
# tenacity.wait_exponential_jitter computes it, written out: a wrapper that was never turned
# away imports nothing for it, and one out of descriptors has nothing left to open.
CLIENT_BACKOFF = (0.1, 2.0, 0.3)
# After a connection refused, nothing listening on the port yet: the server's wrapper is still
# starting, as it is when every pod of a gang starts at once.  The kernel answered (a RST), no
# process and no handshake slot of the server was spent, so the first tries can come soon.
NOT_LISTENING_BACKOFF = (0.01, 2.0, 0.01)


def exponential_jitter(tries: int, first: float, longest: float, jitter: float,
                       rng: Callable[[], float] = random.random) -> float:
    """The wait after the `tries`-th failed try: first * 2^(tries - 1) plus up to `jitter`, at most `longest`."""
    return min(longest, first * 2.0 ** min(max(tries, 1) - 1, 64) + jitter * rng())


def client_backoff():
    """How long a client waits before trying again after it was turned away or closed before
    the server proved itself: 0.1 s doubling up to 2 s, with jitter.  A tenacity wait:
    callable(retry_state) -> seconds."""
    return lambda state: exponential_jitter(state.attempt_number, *CLIENT_BACKOFF)


def not_listening(e: BaseException) -> bool:
    """The server's address answered, but nothing listens on the port (yet)."""
    return isinstance(e, ConnectionRefusedError)


class Backoff:
    """The client's backoff for a loop of its own: the wait before each next try, never past a
    deadline.  CLIENT_BACKOFF after a refusal by the server; NOT_LISTENING_BACKOFF, counted
    apart, after a connection refused while the server starts."""

    def __init__(self):
        self.tries = 0
        self.not_listening_tries = 0

    def delay(self, deadline: float, error: BaseException | None = None) -> float:
        """The pause before the next try (counted as one), never past the deadline; `error`: why
        the last one failed (picks the schedule)."""
        if error is not None and not_listening(error):
            self.not_listening_tries += 1
            wait = exponential_jitter(self.not_listening_tries, *NOT_LISTENING_BACKOFF)
        else:
            self.tries += 1
            wait = exponential_jitter(self.tries, *CLIENT_BACKOFF)
        return max(0.0, min(wait, deadline - time.monotonic()))

    def sleep(self, deadline: float, error: BaseException | None = None) -> None:
        time.sleep(self.delay(deadline, error))


def retrying(deadline: float, retry_on: tuple[type[BaseException], ...]):
    """tenacity.Retrying for a connection attempt: again on `retry_on` with client_backoff()
    until time.monotonic() reaches `deadline`, then the last error is raised as it was."""
    import tenacity

    backoff = client_backoff()

    def wait(state):  # never sleep past the deadline
        return max(0.0, min(backoff(state), deadline - time.monotonic()))

    return tenacity.Retrying(
        stop=lambda state: time.monotonic() >= deadline,
        wait=wait,
        retry=tenacity.retry_if_exception_type(retry_on),
        reraise=True,
    )
