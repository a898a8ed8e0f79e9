"""Named message types: the wire bytes of every kind (and every WAL record) are those of the positional
tuples they replaced, decoding is strict (validate_basic), and encode/decode round-trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus import messages as m
from consensus import wal
from consensus.certificate import Certificate
from consensus.crypto import Ed25519Crypto, KeyedHashCrypto

# Captured from commit 2f0ea4c (before the bodies had names) by building each message from positional tuples.
GOLDEN = json.loads((Path(__file__).parent / "golden_wire.json").read_text())
LIMITS = m.Limits(n_members=4, max_bytes=1 << 20, window=64)

D1, D2, SD = b"\x11" * 32, b"\x22" * 32, b"\x33" * 32
PROOF = ((0, b"\x01" * 64), (2, b"\x02" * 64), (3, b"\x03" * 64))


def _golden_messages() -> dict[str, m.Message]:
    c = Ed25519Crypto(bytes(range(32)), ())
    sign = lambda kind, sender, body: m.sign(c, "golden", kind, sender, body)  # noqa: E731
    vc = sign(m.VIEWCHANGE, 1, m.ViewChange(
        new_view=5, stable_height=16, stable_digest=SD, stable_proof=PROOF,
        entries=(m.ViewChangeEntry(17, 3, D1, m.ENTRY_PREPARED, PROOF),
                 m.ViewChangeEntry(18, 4, D2, m.ENTRY_COMMITTED, PROOF))))
    return {
        "preprepare": sign(m.PREPREPARE, 0, m.PrePrepare(view=3, height=7, digest=D1, payload=b"payload bytes")),
        "preprepare_nopayload": sign(m.PREPREPARE, 0, m.PrePrepare(3, 7, D1, None)),
        "prepare": sign(m.PREPARE, 1, m.Prepare(view=3, height=7, digest=D1)),
        "commit": sign(m.COMMIT, 2, m.CommitVote(view=3, height=7, digest=D1)),
        "checkpoint": sign(m.CHECKPOINT, 3, m.Checkpoint(height=16, state_digest=SD)),
        "viewchange": vc,
        "viewchange_genesis": sign(m.VIEWCHANGE, 2, m.ViewChange(1, 0, b"", (), ())),
        "newview": sign(m.NEWVIEW, 1, m.NewView(view=5, view_changes=(vc.encode(), vc.encode()), assignments=(
            m.Assignment(17, D1, b"\x09" * 64), m.Assignment(19, D2, b"\x08" * 64)))),
        "status": sign(m.STATUS, 2, m.Status(view=5, in_view_change=True, last_committed=300, stable_height=288)),
        "status_false": sign(m.STATUS, 2, m.Status(0, False, 0, 0)),
        "fetch": sign(m.FETCH, 0, m.Fetch(height=7, digest=D1)),
        "payload": sign(m.PAYLOAD, 1, m.Payload(height=7, digest=D1, payload=b"\x00" * 300)),
        "decided": sign(m.DECIDED, 3, m.Decided(7, b"blk", Certificate(7, 2, D1, PROOF).encode())),
        "complain": sign(m.COMPLAIN, 1, m.Complain(view=1 << 40)),
    }


def test_every_kind_encodes_to_the_bytes_of_the_positional_format():
    msgs = _golden_messages()
    assert set(msgs) | {k for k in GOLDEN if k.startswith("wal_")} == set(GOLDEN)
    assert {x.kind for x in msgs.values()} == set(m.KIND_NAMES)  # every kind is pinned
    for name, msg in msgs.items():
        assert msg.encode().hex() == GOLDEN[name], name
        back = m.decode(bytes.fromhex(GOLDEN[name]), 4, 1 << 20, 64)
        assert back == msg and type(back.body) is m.BODY_TYPES[msg.kind], name
        assert m.verify(Ed25519Crypto(bytes(range(32)), [Ed25519Crypto(bytes(range(32)), ()).public_key] * 4),
                        "golden", back), name


def test_wal_records_keep_their_bytes():
    assert wal.view_record(9).hex() == GOLDEN["wal_view"]
    assert wal.newview_record(5, _golden_messages()["newview"].encode()).hex() == GOLDEN["wal_newview"]
    assert wal.vote_record(3, 7, D1, b"payload").hex() == GOLDEN["wal_vote"]
    assert wal.vote_record(3, 7, D1, None).hex() == GOLDEN["wal_vote_none"]
    assert wal.commit_record(3, 7, D1, PROOF).hex() == GOLDEN["wal_commit"]
    assert wal.stable_record(16, SD, PROOF).hex() == GOLDEN["wal_stable"]


def test_positional_tuples_still_build_the_named_bodies():
    """Callers outside consensus/ (the adversary, tests) still pass tuples: they become the typed body."""
    c = KeyedHashCrypto(0, KeyedHashCrypto.secrets_for(4))
    a = m.sign(c, "t", m.VIEWCHANGE, 0, (1, 0, b"", (), ((1, 0, D1, 0, PROOF),)))
    b = m.sign(c, "t", m.VIEWCHANGE, 0, m.ViewChange(1, 0, b"", (), (m.ViewChangeEntry(1, 0, D1, 0, PROOF),)))
    assert a.encode() == b.encode() and type(a.body.entries[0]) is m.ViewChangeEntry
    assert m.Message(m.PREPARE, 0, (1, 2, D1), b"").body.digest == D1


# ---- validate_basic: what a peer cannot get past the decoder ---------------------------------------------

BAD_BODIES = [
    (m.PREPREPARE, [1, 2, b"", b"p"]),            # empty digest
    (m.PREPREPARE, [1, 2, b"d" * 65, b"p"]),       # digest too long
    (m.PREPREPARE, [-1, 2, b"d", None]),           # negative view
    (m.PREPREPARE, [1, 2, b"d", "payload"]),       # str payload
    (m.PREPARE, [1, 2**63, b"d"]),                 # height out of range
    (m.PREPARE, [True, 2, b"d"]),                  # bool is not an int
    (m.PREPARE, [1, 2, b"d", b"extra"]),           # extra field
    (m.COMMIT, [1, 2]),                            # missing field
    (m.CHECKPOINT, [16, b""]),
    (m.VIEWCHANGE, [1, 0, b"", [[0, b"s"]] * 5, []]),  # proof longer than the membership
    (m.VIEWCHANGE, [1, 0, b"", [], [[1, 0, b"d", 2, []]]]),  # unknown entry kind
    (m.VIEWCHANGE, [1, 0, b"", [], [[1, 0, b"d", True, []]]]),  # a bool entry kind
    (m.VIEWCHANGE, [1, 0, b"", [[0, b"s" * 129]], []]),  # signature too long
    (m.VIEWCHANGE, [1, 0, b"", [[0]], []]),          # signature pair of one
    (m.NEWVIEW, [1, [b"x"] * 5, []]),                # more VIEW-CHANGEs than members
    (m.NEWVIEW, [1, ["x"], []]),                     # a VIEW-CHANGE that is not bytes
    (m.NEWVIEW, [1, [], [[1, b"d"]]]),               # assignment without a signature
    (m.STATUS, [1, 1, 0, 0]),                        # in_view_change must be a bool
    (m.FETCH, [1, None]),
    (m.PAYLOAD, [1, b"d", b"p" * ((1 << 20) + 1)]),  # payload over max_bytes
    (m.DECIDED, [1, b"p", b"c" * ((1 << 16) + 1)]),  # certificate over 64 KiB
    (m.COMPLAIN, [1, 2]),
]


@pytest.mark.parametrize(("kind", "raw"), BAD_BODIES)
def test_validate_basic_refuses_each_malformed_field(kind, raw):
    with pytest.raises(m.DecodeError):
        m.decode_body(kind, raw, LIMITS)
    data = m._pack([kind, 0, raw, b"s"])
    with pytest.raises(m.DecodeError):
        m.decode(data, 4, 1 << 20, 64)


# ---- round trips -------------------------------------------------------------------------------------------

ints = st.integers(0, m.MAX_INT)
digests = st.binary(min_size=1, max_size=m.MAX_DIGEST)
sigs = st.binary(max_size=m.MAX_SIG)
payloads = st.binary(max_size=512)
pairs = st.lists(st.tuples(ints, sigs), max_size=4).map(tuple)
entries = st.builds(m.ViewChangeEntry, ints, ints, digests, st.sampled_from([m.ENTRY_PREPARED, m.ENTRY_COMMITTED]),
                    pairs)
BODIES = {
    m.PREPREPARE: st.builds(m.PrePrepare, ints, ints, digests, st.none() | payloads),
    m.PREPARE: st.builds(m.Prepare, ints, ints, digests),
    m.COMMIT: st.builds(m.CommitVote, ints, ints, digests),
    m.CHECKPOINT: st.builds(m.Checkpoint, ints, digests),
    m.VIEWCHANGE: st.builds(m.ViewChange, ints, ints, st.binary(max_size=m.MAX_DIGEST), pairs,
                            st.lists(entries, max_size=3).map(tuple)),
    m.NEWVIEW: st.builds(m.NewView, ints, st.lists(payloads, max_size=4).map(tuple),
                         st.lists(st.builds(m.Assignment, ints, digests, sigs), max_size=4).map(tuple)),
    m.STATUS: st.builds(m.Status, ints, st.booleans(), ints, ints),
    m.FETCH: st.builds(m.Fetch, ints, digests),
    m.PAYLOAD: st.builds(m.Payload, ints, digests, payloads),
    m.DECIDED: st.builds(m.Decided, ints, payloads, st.binary(max_size=256)),
    m.COMPLAIN: st.builds(m.Complain, ints),
}
any_message = st.sampled_from(sorted(BODIES)).flatmap(
    lambda kind: st.tuples(st.just(kind), st.integers(0, 3), BODIES[kind]))


@settings(max_examples=400, deadline=None)
@given(any_message)
def test_every_valid_body_round_trips_byte_for_byte(item):
    kind, sender, body = item
    body.validate_basic(LIMITS)
    c = KeyedHashCrypto(sender, KeyedHashCrypto.secrets_for(4))
    msg = m.sign(c, "t", kind, sender, body)
    data = msg.encode()
    back = m.decode(data, 4, 1 << 20, 64)
    assert back.kind == kind and back.sender == sender and back.body == body and back.sig == msg.sig
    assert type(back.body) is type(body)
    assert back.encode() == data
    assert m.verify(c, "t", back)  # the signature covers what was decoded
    assert m.encode(kind, sender, tuple(body), msg.sig) == data  # the plain tuple's bytes: the old format


def test_a_message_is_immutable_and_compares_by_content():
    """decode_cached hands one Message to every replica of a process: none may change it."""
    msg = m.Message(m.PREPARE, 0, (1, 2, D1), b"s")
    with pytest.raises(AttributeError):
        msg.sig = b"x"
    with pytest.raises(AttributeError):
        del msg.body
    same = m.Message(m.PREPARE, 0, m.Prepare(1, 2, D1), b"s")
    assert msg == same and hash(msg) == hash(same) and msg.body is not same.body
    assert msg != m.Message(m.PREPARE, 0, (1, 2, D1), b"t") and msg != m.Message(m.COMMIT, 0, (1, 2, D1), b"s")
    assert "body=Prepare(view=1, height=2" in repr(msg)
