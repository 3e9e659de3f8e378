"""admission.py: who may start a handshake, how refusals are reported, how clients come back."""

import logging
import resource
import sys
import time
from pathlib import Path

import pytest

from jobset_runtime import admission
from jobset_runtime.admission import Gate, Limits, RefusalLog

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))  # the DNS test helpers
from dnsfixtures import SlowDns  # noqa: E402


def test_per_source_cap_holds_unknown_addresses_but_not_known_pods():
    gate = Gate(Limits(total=100, per_source=3, reserved=10), known=lambda a: a == "10.0.0.9", rng=lambda: 1.0)
    assert [gate.admit("10.0.0.1") for _ in range(3)] == [None] * 3
    assert "3 handshakes from this address" in gate.admit("10.0.0.1")
    assert gate.admit("10.0.0.2") is None  # another address has its own share
    assert all(gate.admit("10.0.0.9") is None for _ in range(10))  # a known pod: no per-source cap
    gate.release("10.0.0.1")
    assert gate.admit("10.0.0.1") is None  # a slot back once a handshake ends


def test_reserved_slots_are_for_known_pods_only():
    gate = Gate(Limits(total=10, per_source=100, reserved=4, early_drop=1.0), known=lambda a: a.startswith("pod"))
    assert all(gate.admit("stranger") is None for _ in range(6))
    assert gate.admit("stranger") == "the slots left are reserved for known pods"
    assert all(gate.admit(f"pod{i}") is None for i in range(4))
    assert gate.admit("pod9") == "every handshake slot is taken"


def _gate_holding(limits, held, draw):
    gate = Gate(limits, rng=lambda: draw)
    gate.under_way = held  # slots already taken
    return gate


@pytest.mark.parametrize("held,p", [(0, 0.0), (9, 0.0), (10, 0.3), (15, 0.65), (19, 0.93)])
def test_random_early_drop_rises_from_its_rate_to_certainty(held, p):
    """sshd's MaxStartups start:rate:full: below `start` nothing is dropped, then a new connection
    is dropped with a probability rising linearly from `rate` to 1 at the end of the share."""
    limits = Limits(total=20, per_source=100, reserved=0, early_drop=0.5, early_rate=0.3)
    assert _gate_holding(limits, held, p + 0.01).admit("a") is None
    if p:
        assert _gate_holding(limits, held, p - 0.01).admit("a") == "dropped early: most handshake slots are taken"
    assert _gate_holding(limits, 20, 0.999).admit("a") is not None


def test_learned_addresses_count_as_known():
    gate = Gate(Limits(total=10, per_source=1, reserved=5), rng=lambda: 1.0)
    assert gate.admit("10.0.0.1") is None
    assert gate.admit("10.0.0.1") is not None
    gate.learn("10.0.0.1")  # it proved the token once
    assert gate.admit("10.0.0.1") is None


def test_refusals_are_one_aggregated_warning_per_window(caplog):
    now = [0.0]
    rl = RefusalLog("test listener", every=10.0, clock=lambda: now[0], logger=logging.getLogger("t.admission"))
    with caplog.at_level(logging.WARNING, logger="t.admission"):
        for i in range(4812):
            now[0] = i * 0.002
            rl.note(f"10.0.0.{i % 3}", "per-source cap" if i % 2 else "handshake timed out")
        assert caplog.records == []  # 9.6 s: not yet
        now[0] = 10.5
        line = rl.flush_due()
    assert [r.getMessage() for r in caplog.records] == [line]
    assert line.startswith("test listener: refused 4,812 unauthenticated connections from 3 addresses in the last 10 s")
    assert "per-source cap: 2,406" in line and "handshake timed out: 2,406" in line
    assert rl.flush_due() is None and rl.total == 4812


def test_descriptor_soft_limit_is_raised_to_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, hard, 256), hard))
        assert admission.raise_nofile_limit() == (hard, hard)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_accept_backoff_doubles_up_to_its_cap():
    pauses, p = [], 0.0
    for _ in range(8):
        p = admission.accept_backoff(p)
        pauses.append(p)
    assert pauses[0] == 0.05 and pauses == sorted(pauses) and pauses[-1] == admission.MAX_PAUSE


@pytest.mark.parametrize("schedule", [admission.CLIENT_BACKOFF, admission.NOT_LISTENING_BACKOFF])
def test_a_clients_backoff_doubles_from_its_first_wait_with_bounded_jitter_up_to_its_cap(schedule):
    first, longest, jitter = schedule
    low = [admission.exponential_jitter(n, *schedule, rng=lambda: 0.0) for n in range(1, 12)]
    high = [admission.exponential_jitter(n, *schedule, rng=lambda: 1.0) for n in range(1, 12)]
    assert low[0] == first and low[1] == 2 * first and low == sorted(low) and low[-1] == longest
    assert all(h - lo <= jitter + 1e-9 for lo, h in zip(low, high)) and high[-1] == longest
    assert admission.exponential_jitter(10_000, *schedule) == longest  # no overflow however long it retried


def test_a_connection_refused_while_the_server_starts_has_a_schedule_of_its_own():
    backoff = admission.Backoff()
    deadline = time.monotonic() + 5.0
    for _ in range(3):
        backoff.sleep(deadline, ConnectionRefusedError())
    assert (backoff.not_listening_tries, backoff.tries) == (3, 0)
    backoff.sleep(deadline, ConnectionResetError())
    backoff.sleep(deadline)
    assert (backoff.not_listening_tries, backoff.tries) == (3, 2)
    # Never past the deadline, whatever the schedule says.
    start = time.monotonic()
    backoff.sleep(start)
    assert backoff.tries == 3
    assert admission.NOT_LISTENING_BACKOFF[0] < admission.CLIENT_BACKOFF[0]


def test_retrying_retries_what_it_is_told_until_the_deadline_then_raises_the_last_error():
    calls = []
    deadline = time.monotonic() + 3.0
    with pytest.raises(ConnectionResetError, match=r"try \d+"):
        for attempt in admission.retrying(deadline, (ConnectionError,)):
            with attempt:
                calls.append(time.monotonic())
                raise ConnectionResetError(f"try {len(calls)}")
    assert len(calls) >= 3 and calls[-1] <= deadline + 1.0
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert all(g > 0.02 for g in gaps)  # never again at once
    # Anything else is raised at the first try.
    with pytest.raises(ValueError):
        for attempt in admission.retrying(time.monotonic() + 5, (ConnectionError,)):
            with attempt:
                calls.append(0)
                raise ValueError("a wrong token")


def test_known_pods_on_claim_asks_for_a_name_only_when_its_pod_claims_it():
    from jobset_runtime.local.dns import DnsServer

    with DnsServer(zones=["svc.cluster.local"]) as dns:
        names = {f"pod-{i}": f"pod-{i}.js.default.svc.cluster.local" for i in range(20)}
        for i, n in enumerate(names.values()):
            dns.set(n, f"10.0.0.{i + 1}")
        known = admission.KnownPods(names, nameservers=[dns.nameserver], on_claim=True).start()
        try:
            time.sleep(0.5)
            assert dns.stats["udp"] == 0 and known.address_of("pod-3") is None
            known.refresh("pod-3")
            end = time.monotonic() + 10
            while known.address_of("pod-3") is None and time.monotonic() < end:
                time.sleep(0.01)
            assert known.address_of("pod-3") == "10.0.0.4" and known("10.0.0.4")
            time.sleep(0.3)
            assert dns.stats["udp"] == 1  # that one name, once; no round for the 19 others
            assert known.address_of("pod-4") is None
        finally:
            known.stop()


def test_known_pods_binds_its_own_pod_to_its_own_address_without_a_query():
    from jobset_runtime.local.dns import DnsServer

    with DnsServer(zones=["svc.cluster.local"]) as dns:
        names = {f"pod-{i}": f"pod-{i}.js.default.svc.cluster.local" for i in range(3)}
        dns.set(names["pod-0"], "10.0.0.99")  # what DNS says does not matter for the own pod
        known = admission.KnownPods(names, nameservers=[dns.nameserver], on_claim=True,
                                    own={"pod-0": "10.0.0.1"}).start()
        try:
            assert known.address_of("pod-0") == "10.0.0.1" and known("10.0.0.1")
            called = []
            known.claim("pod-0", lambda: called.append(True))
            known.refresh("pod-0")
            assert called == [True]  # at once, from the caller: nothing to ask
            time.sleep(0.3)
            assert dns.stats["udp"] == 0 and known.address_of("pod-0") == "10.0.0.1"
        finally:
            known.stop()


def test_claims_made_while_a_pods_lookup_is_under_way_get_its_answer_without_another_query():
    """A pod that claims again before the server's slow answer came (a member that retried after its
    claim was refused for want of an answer) is answered by the lookup already sent."""
    from jobset_runtime.local.dns import DnsServer

    with DnsServer(zones=["svc.cluster.local"]) as dns:
        name = "pod-1.js.default.svc.cluster.local"
        dns.set(name, "10.0.0.2")
        relay = SlowDns(dns.address, delay=0.6)
        known = admission.KnownPods({"pod-1": name}, nameservers=[relay.nameserver], on_claim=True).start()
        try:
            answered = []
            known.claim("pod-1", lambda: answered.append(known.address_of("pod-1")))
            time.sleep(0.2)  # the lookup is under way
            known.claim("pod-1", lambda: answered.append(known.address_of("pod-1")))
            end = time.monotonic() + 10
            while len(answered) < 2 and time.monotonic() < end:
                time.sleep(0.01)
            assert answered == ["10.0.0.2", "10.0.0.2"]
            time.sleep(0.3)
        finally:
            known.stop()
            relay.close()
        assert dns.stats["udp"] == 1
