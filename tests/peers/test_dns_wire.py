"""The hand-written reply parser, checked against messages dnspython builds."""

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rrset
from hypothesis import given, settings
from hypothesis import strategies as st

from jobset_runtime.peers import NODATA, _parse_reply, _qname_wire

NAME = "js-worker-0-1.js.default.svc.cluster.local"
QUESTION = _qname_wire(NAME) + b"\x00\x01\x00\x01"


def reply(qid=7, name=NAME, rcode=dns.rcode.NOERROR, answers=(), tc=False):
    query = dns.message.make_query(name, "A", id=qid)
    resp = dns.message.make_response(query)
    resp.set_rcode(rcode)
    for rr in answers:
        resp.answer.append(rr)
    if tc:
        resp.flags |= dns.flags.TC
    return resp.to_wire()  # dnspython compresses owner names into pointers


def test_qname_wire_matches_dnspython():
    assert _qname_wire(NAME + ".") == dns.name.from_text(NAME).to_wire()
    assert _qname_wire(NAME.upper()) == _qname_wire(NAME)


def test_a_answer_with_compressed_owner():
    wire = reply(answers=[dns.rrset.from_text(NAME + ".", 0, "IN", "A", "10.1.2.3", "10.1.2.4")])
    first_on_wire = next(iter(dns.message.from_wire(wire).answer[0])).address
    assert _parse_reply(wire, 7, QUESTION) == ("ok", first_on_wire)


def test_a_at_the_end_of_a_cname_chain():
    answers = [
        dns.rrset.from_text(NAME + ".", 0, "IN", "CNAME", "target.example."),
        dns.rrset.from_text("target.example.", 0, "IN", "AAAA", "fd00::1"),
        dns.rrset.from_text("target.example.", 0, "IN", "A", "192.0.2.9"),
    ]
    assert _parse_reply(reply(answers=answers), 7, QUESTION) == ("ok", "192.0.2.9")


def test_rcodes_nodata_and_tc():
    assert _parse_reply(reply(rcode=dns.rcode.NXDOMAIN), 7, QUESTION) == ("NXDOMAIN", None)
    assert _parse_reply(reply(rcode=dns.rcode.SERVFAIL), 7, QUESTION) == ("SERVFAIL", None)
    assert _parse_reply(reply(), 7, QUESTION) == (NODATA, None)
    assert _parse_reply(reply(tc=True), 7, QUESTION) == ("tc", None)


def test_reply_must_match_id_and_question():
    wire = reply(answers=[dns.rrset.from_text(NAME + ".", 0, "IN", "A", "10.1.2.3")])
    assert _parse_reply(wire, 8, QUESTION) is None
    other = _qname_wire("js-worker-0-2.js.default.svc.cluster.local") + b"\x00\x01\x00\x01"
    assert _parse_reply(wire, 7, other) is None
    # Case changes in the echoed question (0x20 randomisation) still match.
    wire = reply(name=NAME.upper(), answers=[dns.rrset.from_text(NAME + ".", 0, "IN", "A", "10.1.2.3")])
    assert _parse_reply(wire, 7, QUESTION) == ("ok", "10.1.2.3")
    # A query (QR clear) is not an answer.
    assert _parse_reply(dns.message.make_query(NAME, "A", id=7).to_wire(), 7, QUESTION) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_garbage_after_a_valid_question_never_raises(tail):
    head = reply()[: 12 + len(QUESTION)]
    head = head[:6] + b"\x00\x03" + head[8:]  # claim three answers
    got = _parse_reply(head + tail, 7, QUESTION)
    assert got is None or got[0] in ("ok", NODATA)
