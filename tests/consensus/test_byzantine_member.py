"""One Byzantine member (f = 1 of 4) tries to halt or bloat the honest replicas with correctly signed
messages: vote floods, future views, checkpoint and VIEW-CHANGE spam, a primary that starves a request.
Each test drives real Replicas (tests/consensus/conftest.py) and asserts what the honest members see."""

import hashlib

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from consensus import messages as m
from consensus.actions import ReportEvidence
from consensus.events import MessageReceived, WorkPending
from consensus.evidence import verify_evidence

BYZ = 3


def _d(*parts) -> bytes:
    return hashlib.sha256(b":".join(b"%d" % p for p in parts)).digest()


def _flood(c, kind: int, view: int, heights, per_height: int = 8) -> None:
    """Member BYZ sends every honest replica `per_height` votes of `kind` with random digests per height."""
    cr = c.crypto(BYZ)
    wires = [m.sign(cr, "test", kind, BYZ, (view, h, _d(kind, view, h, k))).encode()
             for h in heights for k in range(per_height)]
    for i in range(c.n):
        if i != BYZ:
            for w in wires:
                c.handle(i, MessageReceived(BYZ, w))


def test_commit_flood_for_a_future_view_does_not_halt_honest_replicas(make_cluster):
    c = make_cluster(pipeline=4)
    c.down.add(BYZ)
    for view in (1, c.n, 16):  # inside and beyond the future views a COMMIT may come from
        _flood(c, m.COMMIT, view, range(1, 9))
    c.work(6)
    assert min(c.heights()[:BYZ]) >= 6
    assert all(r.view == 0 for r in c.replicas[:BYZ])


def test_prepare_flood_before_the_preprepare_does_not_halt_honest_replicas(make_cluster):
    c = make_cluster(pipeline=4)
    c.down.add(BYZ)
    _flood(c, m.PREPARE, 0, range(1, 9))
    c.work(6)
    assert min(c.heights()[:BYZ]) >= 6


def test_a_member_holds_at_most_one_vote_per_view_and_height_and_a_second_is_evidence(make_cluster):
    c = make_cluster(auto=False)
    r = c.replicas[1]
    cr = c.crypto(BYZ)
    first = r.handle(MessageReceived(BYZ, m.sign(cr, "test", m.PREPARE, BYZ, (0, 1, _d(1))).encode()))
    assert not any(isinstance(a, ReportEvidence) for a in first)
    ev = []
    for k in range(2, 10):
        out = r.handle(MessageReceived(BYZ, m.sign(cr, "test", m.PREPARE, BYZ, (0, 1, _d(k))).encode()))
        ev += [a for a in out if isinstance(a, ReportEvidence)]
    assert len(ev) == 1 and verify_evidence(ev[0].evidence, c.crypto(0), "test")["member"] == BYZ
    slot = r.slots[1]
    assert sum(BYZ in votes for votes in slot.prepares.values()) == 1
    # commits: one per view, and only the member's newest views are kept
    for v in range(12):
        for k in range(3):
            r.handle(MessageReceived(BYZ, m.sign(cr, "test", m.COMMIT, BYZ, (v, 1, _d(v, k))).encode()))
    assert sum(BYZ in votes for votes in slot.commits.values()) <= 2


def _commits_sent(actions) -> list:
    out = []
    for a in actions:
        data = getattr(a, "data", None)
        if data is not None and m.decode(data, 4, 1 << 20, 64).kind == m.COMMIT:
            out.append(a)
    return out


def test_no_commit_on_prepare_quorum_without_an_accepted_preprepare(make_cluster):
    """2f+1 prepare signatures alone never make a replica commit a block its own validation refused, or one
    whose payload it has not seen and validated yet."""
    c = make_cluster(auto=False)
    cr = [c.crypto(i) for i in range(4)]
    for payload, valid in ((b"not-a-block", False), (b"blk:1:0", True)):
        c2 = type(c)(auto=False)
        r = c2.replicas[1]
        d = c2.app.digest(payload)
        pp = m.sign(cr[0], "test", m.PREPREPARE, 0, (0, 1, d, payload if not valid else None)).encode()
        out = r.handle(MessageReceived(0, pp))
        for i in (2, 3):
            out += r.handle(MessageReceived(i, m.sign(cr[i], "test", m.PREPARE, i, (0, 1, d)).encode()))
        assert r.slots[1].prepared is not None  # the quorum of signatures is there
        assert _commits_sent(out) == []
        if valid:  # the payload arrives and validates: now it commits
            pl = m.sign(cr[0], "test", m.PAYLOAD, 0, (1, d, payload)).encode()
            assert len(_commits_sent(r.handle(MessageReceived(0, pl)))) == 1
        else:
            assert r.stats["drop_invalid_proposal"] == 1


def _new_view_1(c, d: bytes):
    """A valid NEW-VIEW for view 1 from its primary (member 1) re-proposing digest d at height 1."""
    cr = [c.crypto(i) for i in range(4)]
    sigs = tuple((i, cr[i].sign(m.vote_signing_bytes("test", 0, 1, d))) for i in range(3))
    entry = (1, 0, d, m.ENTRY_PREPARED, sigs)
    vcs = tuple(m.sign(cr[i], "test", m.VIEWCHANGE, i, (1, 0, b"", (), (entry,))).encode() for i in (1, 2, 3))
    asg = ((1, d, cr[1].sign(m.vote_signing_bytes("test", 1, 1, d))),)
    return m.sign(cr[1], "test", m.NEWVIEW, 1, (1, vcs, asg)).encode()


def test_new_view_assignment_signatures_feed_the_equivocation_check(make_cluster):
    c = make_cluster(auto=False)
    r = c.replicas[0]
    d = c.app.digest(b"blk:1:0")
    r.handle(MessageReceived(2, _new_view_1(c, d)))
    assert r.view == 1 and not r.in_view_change
    other = b"blk:1:1:other"
    pp = m.sign(c.crypto(1), "test", m.PREPREPARE, 1, (1, 1, c.app.digest(other), other)).encode()
    ev = [a for a in r.handle(MessageReceived(1, pp)) if isinstance(a, ReportEvidence)]
    assert len(ev) == 1
    parsed = verify_evidence(ev[0].evidence, c.crypto(2), "test")
    assert (parsed["member"], parsed["view"], parsed["height"]) == (1, 1, 1)


def test_checkpoint_votes_at_ever_higher_heights_keep_bounded_state(make_cluster):
    c = make_cluster(auto=False)
    r = c.replicas[1]
    cr = c.crypto(BYZ)
    K = c.config.checkpoint_interval
    for k in range(1, 1001):
        r.handle(MessageReceived(BYZ, m.sign(cr, "test", m.CHECKPOINT, BYZ, (k * K, _d(k))).encode()))
    assert sum(len(v) for v in r.checkpoints.votes.values()) <= 4 and len(r.checkpoints.votes) <= 4
    assert len(r.equivocations.seen) <= 2 * c.config.watermark_window
    assert r.stable_checkpoint == 0


class CountingCrypto:
    def __init__(self, inner) -> None:
        self.inner, self.verified = inner, 0

    def sign(self, data: bytes) -> bytes:
        return self.inner.sign(data)

    def verify(self, member: int, data: bytes, sig: bytes) -> bool:
        self.verified += 1
        return self.inner.verify(member, data, sig)


def _view_change(c, member: int, w: int, entries=()) -> bytes:
    return m.sign(c.crypto(member), "test", m.VIEWCHANGE, member, (w, 0, b"", (), tuple(entries))).encode()


def test_view_change_for_a_far_view_is_refused_and_never_counts_toward_the_timer(make_cluster):
    c = make_cluster(auto=False)
    r = c.replicas[1]
    c.perform(1, r.handle(WorkPending(1)))
    c.fire(1, "progress")
    assert r.in_view_change and r.view == 1
    r.handle(MessageReceived(BYZ, _view_change(c, BYZ, 10**6)))
    assert r.stats["drop_far_view_change"] == 1 and BYZ not in r.view_changes.received
    c.perform(1, r.handle(MessageReceived(2, _view_change(c, 2, 1))))
    # 2 members (1 and 2) want view 1: no quorum, so no view-change timer, whatever BYZ sent
    assert not any(t[0] == "vc" for t in c.timers[1])
    # f+1 members report a later view in STATUS: view changes up to one rotation above it are accepted
    for i in (0, 2):
        r.handle(MessageReceived(i, m.sign(c.crypto(i), "test", m.STATUS, i, (40, True, 0, 0)).encode()))
    r.handle(MessageReceived(BYZ, _view_change(c, BYZ, 40 + c.n)))
    assert r.view_changes.received[BYZ].body.new_view == 40 + c.n


def test_costly_view_change_checks_are_rate_limited_per_member(make_cluster):
    """Each VIEW-CHANGE for a new, higher view costs up to L*q + q signature checks: one member gets a
    bounded number of such checks per tick (and per view this replica enters), however many it sends."""
    c = make_cluster(auto=False)
    r = c.replicas[1]
    r.crypto = counting = CountingCrypto(r.crypto)
    L, q = c.config.watermark_window, c.config.quorum
    d = _d(0)
    sigs = tuple((i, c.crypto(i).sign(m.vote_signing_bytes("test", 0, 1, d))) for i in range(q))
    heavy = [(h, 0, d, m.ENTRY_PREPARED, sigs) for h in range(1, L + 1)]  # only height 1 is validly signed
    wires = [_view_change(c, BYZ, w, heavy) for w in range(1, c.n + 1)]
    for w in wires:
        r.handle(MessageReceived(BYZ, w))
    per_message = 1 + 2 * q  # its own signature, one good entry, one bad entry (the check stops there)
    assert counting.verified <= 2 * per_message
    assert r.stats["drop_rate_limited_view_change"] == len(wires) - 2


def test_payloads_are_kept_only_for_digests_the_replica_needs(make_cluster):
    """A member's own vote must not make honest replicas store its (up to 8 MiB) payload."""
    c = make_cluster(auto=False)
    r = c.replicas[1]
    cr = c.crypto(BYZ)
    big = b"blk:1:3:" + b"x" * 100_000
    d = c.app.digest(big)
    r.handle(MessageReceived(BYZ, m.sign(cr, "test", m.PREPARE, BYZ, (0, 1, d)).encode()))
    r.handle(MessageReceived(BYZ, m.sign(cr, "test", m.COMMIT, BYZ, (0, 1, d)).encode()))
    r.handle(MessageReceived(BYZ, m.sign(cr, "test", m.PAYLOAD, BYZ, (1, d, big)).encode()))
    assert r.slots[1].payloads == {} and r.stats["drop_unsolicited_payload"] == 1


_KINDS = (m.PREPARE, m.COMMIT, m.CHECKPOINT, m.VIEWCHANGE, m.COMPLAIN, m.STATUS, m.PAYLOAD, m.FETCH)


def _byzantine_message(c, kind: int, view: int, h: int, k: int) -> bytes:
    cr = c.crypto(BYZ)
    if kind in (m.PREPARE, m.COMMIT):
        body = (view, h, _d(k))
    elif kind == m.CHECKPOINT:
        body = (h * c.config.checkpoint_interval, _d(k))
    elif kind == m.VIEWCHANGE:
        body = (view + 1, 0, b"", (), ())
    elif kind == m.COMPLAIN:
        body = (view,)
    elif kind == m.STATUS:
        body = (view, bool(k % 2), h, 0)
    elif kind == m.PAYLOAD:
        body = (h, _d(k), b"blk:%d:3:%d" % (h, k))
    else:
        body = (h, _d(k))
    return m.sign(cr, "test", kind, BYZ, body).encode()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example([(m.COMMIT, v, 9, v) for v in range(5)] + [(m.PREPARE, 0, 9, k) for k in range(4)])  # the floods
@example([(m.CHECKPOINT, 0, h, h) for h in range(1, 60)])  # ever-higher checkpoints
@given(st.lists(st.tuples(st.sampled_from(_KINDS), st.sampled_from((0, 1, 2, 3, 4, 5, 64, 2**40)),
                          st.one_of(st.integers(1, 4), st.integers(8, 10), st.integers(1, 200)), st.integers(0, 30)),
                min_size=1, max_size=60))
def test_any_stream_from_one_member_keeps_state_bounded_and_honest_replicas_committing(make_cluster, stream):
    c = make_cluster(pipeline=2)
    c.down.add(BYZ)
    n, L = c.n, c.config.watermark_window
    for step, (kind, view, h, k) in enumerate(stream):
        wire = _byzantine_message(c, kind, view, h, k)
        for i in range(BYZ):
            c.handle(i, MessageReceived(BYZ, wire))
        if step % 20 == 0:
            c.work(1)
    c.work(2)
    assert min(c.heights()[:BYZ]) >= 2 + len(stream) // 20
    for r in c.replicas[:BYZ]:
        for s in r.slots.values():  # per height and kind: the member's two newest views, one vote each
            for table in (s.prepares, s.commits):
                assert sum(BYZ in votes for votes in table.values()) <= 2
        assert len(r.slots) <= 2 * L and len(r.checkpoints.votes) <= 4 * n and len(r.view_changes.received) <= n
        assert all(len(s.payloads) <= 4 for s in r.slots.values())
        assert r.equivocations.seen_per_member[BYZ] <= 100_000 // n and len(r.fairness.complaints) <= n
