"""mpirun's stderr, relayed by the launcher: every byte passes, and the job's announced end is noted."""

import os
import threading
import time

from jobset_runtime.mpi.announcements import ENDINGS, StderrRelay, ending_in

ABORT = (b"--------------------------------------------------------------------------\n"
         b"MPI_ABORT was invoked on rank 3 in communicator MPI_COMM_WORLD\n  Proc: [[39054,1],3]\n  Errorcode: 1\n")


def test_each_mpis_announcement_is_recognised_and_ordinary_output_is_not():
    assert ending_in(ABORT) == "MPI_ABORT was invoked on rank"
    assert ending_in(b"PRTE has lost communication with a remote daemon.\n") == \
        "has lost communication with a remote daemon"
    assert ending_in(b"ORTE has lost communication with a remote daemon.\n") == \
        "has lost communication with a remote daemon"
    assert ending_in(b"=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES\n") is not None
    assert ending_in(b"prterun detected that one or more processes exited with non-zero status, thus") is not None
    # The first one in the text wins.
    assert ending_in(b"x has lost communication with a remote daemon\n" + ABORT) == \
        "has lost communication with a remote daemon"
    for quiet in (b"", b"RESULT {\"size\": 4}\n", b"rank 3 aborted its own loop\n", b"MPI_ABORT\n"):
        assert ending_in(quiet) is None, quiet


def _relay(chunks: list[bytes]) -> tuple[StderrRelay, bytes]:
    src_r, src_w = os.pipe()
    dst_r, dst_w = os.pipe()
    copied = []
    reader = threading.Thread(target=lambda: copied.append(os.fdopen(dst_r, "rb").read()))
    reader.start()
    relay = StderrRelay(os.fdopen(src_r, "rb", buffering=0), target_fd=dst_w).start()
    for chunk in chunks:
        os.write(src_w, chunk)
        time.sleep(0.05)  # one read each: a text cut across two reads
    os.close(src_w)
    relay.join(5)
    os.close(dst_w)
    reader.join(5)
    return relay, copied[0]


def test_the_relay_passes_every_byte_and_notes_an_announcement_cut_in_two():
    text = b"boom\n" + ABORT + b"tail \xff\xfe not utf-8\n"
    cut = text.index(b"invoked") + 3
    before = time.monotonic()
    relay, copied = _relay([text[:cut], text[cut:]])
    assert copied == text
    assert relay.ending == "MPI_ABORT was invoked on rank"
    assert before <= relay.ended_at <= time.monotonic()


def test_the_relay_notes_nothing_in_ordinary_output():
    relay, copied = _relay([b"RESULT {}\n", b"x" * 100_000])
    assert copied == b"RESULT {}\n" + b"x" * 100_000
    assert relay.ending is None and relay.ended_at is None


def test_every_announcement_fits_the_carry_over():
    # The relay keeps len(longest) - 1 bytes of a read for the next: enough for any of them.
    for e in ENDINGS:
        relay, _ = _relay([b"a" * 10 + e[:-1], e[-1:] + b"\n"])
        assert relay.ending == e.decode()
