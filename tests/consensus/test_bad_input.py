import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus import messages as m
from consensus.events import (
    Executed,
    MessageReceived,
    ProposalReady,
    StateTransferred,
    TimerFired,
    WorkPending,
)


def test_malformed_and_unverifiable_messages_are_dropped_and_counted(make_cluster):
    c = make_cluster(auto=False)
    r = c.replicas[1]
    cr0, cr2 = c.crypto(0), c.crypto(2)
    d = c.app.digest(b"blk:1:0")
    cases = [
        (0, b"\xff\x00garbage", "drop_malformed"),
        (0, msgpack.packb({"a": 1}), "drop_malformed"),
        (0, msgpack.packb([2, 0, [0, 1], b"s"]), "drop_malformed"),
        (0, m.encode(m.PREPARE, 0, (0, 1, d), bytes(64)), "drop_bad_signature"),
        (0, m.sign(cr2, "test", m.PREPARE, 2, (0, 1, d)).encode(), "drop_sender_mismatch"),
        (0, m.sign(cr2, "test", m.PREPARE, 0, (0, 1, d)).encode(), "drop_bad_signature"),  # 2's key, claims 0
        (0, m.sign(cr0, "other-chain", m.PREPARE, 0, (0, 1, d)).encode(), "drop_bad_signature"),
        (9, b"x", "drop_bad_sender"),
        (1, b"x", "drop_bad_sender"),
        (0, m.sign(cr0, "test", m.PREPARE, 0, (5, 1, d)).encode(), "drop_future_view"),
        (2, m.sign(cr2, "test", m.PREPREPARE, 2, (0, 1, d, b"blk:1:0")).encode(), "drop_not_primary"),
        (0, m.sign(cr0, "test", m.PREPREPARE, 0, (0, 1, d, b"blk:1:0:x")).encode(), "drop_bad_digest"),
        (0, m.sign(cr0, "test", m.DECIDED, 0, (1, b"blk:1:0", b"junk")).encode(), "drop_bad_certificate"),
        (0, m.sign(cr0, "test", m.CHECKPOINT, 0, (3, b"s" * 32)).encode(), "drop_bad_checkpoint"),
        (0, b"\x00" * (c.config.max_message_bytes + 5000), "drop_oversized"),
    ]
    for sender, data, reason in cases:
        before = r.stats[reason]
        assert r.handle(MessageReceived(sender, data)) == [], reason
        assert r.stats[reason] == before + 1, reason


def test_bad_local_events_never_raise(make_cluster):
    c = make_cluster(auto=False)
    r = c.replicas[0]
    for ev in (WorkPending(-1), WorkPending("x"), ProposalReady("h", b""), ProposalReady(1, None),
               Executed(-1, b""), Executed(1, "s"), StateTransferred(None, b""), TimerFired(["unhashable"]),
               TimerFired(("nope",)), MessageReceived("0", b""), MessageReceived(0, "text"), object(), None):
        r.handle(ev)
    assert r.stats["dropped"] >= 12


_CLUSTER = None


def _cluster():
    global _CLUSTER
    if _CLUSTER is None:
        import importlib.util
        import pathlib
        spec = importlib.util.spec_from_file_location("_cc", pathlib.Path(__file__).with_name("conftest.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _CLUSTER = mod.Cluster(auto=False)
    return _CLUSTER


@settings(max_examples=400, deadline=None)
@given(st.integers(min_value=-1, max_value=4), st.one_of(
    st.binary(max_size=200),
    st.lists(st.one_of(st.integers(-5, 2**64 - 1), st.binary(max_size=40), st.none(), st.booleans(),
                       st.lists(st.integers(0, 5), max_size=4)), max_size=6).map(
        lambda xs: msgpack.packb([xs[0] if xs and isinstance(xs[0], int) else 3, 0, xs, b"s" * 64]))))
def test_fuzzed_messages_never_raise(sender, data):
    r = _cluster().replicas[1]
    r.handle(MessageReceived(sender, data))
