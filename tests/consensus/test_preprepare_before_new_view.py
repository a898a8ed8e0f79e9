"""A pre-prepare that arrives before its NEW-VIEW must be validated and voted for on entering the view, never
half-accepted (simulator seeds 158 and 347 at n = 4, issue 9).

The replica had kept a stale "assigned by NEW-VIEW" mark on a height from an earlier view's NEW-VIEW; a
PRE-PREPARE of the next view accepted during the view change then skipped its PREPARE on entry (the mark
said "already voted by assignment"), and the replica sent COMMIT on its peers' prepares for a digest it had
never voted for in that view."""

from consensus import messages as m
from consensus.events import MessageReceived
from consensus.messages import ENTRY_PREPARED, vote_signing_bytes

from .conftest import Cluster

ME = 3


def _actions(r, sender, msg):
    return r.handle(MessageReceived(sender, msg.encode()))


def _sent(actions, n=4):
    from consensus.actions import Broadcast

    out = []
    for a in actions:
        if isinstance(a, Broadcast):
            out.append(m.decode(a.data, n, 1 << 20, 64))
    return out


def test_preprepare_buffered_before_new_view_is_prepared_before_any_commit():
    c = Cluster(auto=False)
    chain = c.config.chain_id
    crypto = [c.crypto(i) for i in range(4)]
    r = c.replicas[ME]
    sent = []

    def deliver(sender, msg):
        sent.extend(_sent(_actions(r, sender, msg)))

    # View 1: height 1 was prepared in view 0 (digest d0), so the NEW-VIEW of view 1 assigns it.
    d0 = c.app.digest(b"blk:1:0")
    proof0 = tuple((i, crypto[i].sign(vote_signing_bytes(chain, 0, 1, d0))) for i in range(3))
    vc1 = [m.sign(crypto[i], chain, m.VIEWCHANGE, i, (1, 0, b"", (), ((1, 0, d0, ENTRY_PREPARED, proof0),)))
           for i in range(3)]
    for vc in vc1[:2]:  # f+1 members want view 1: replica 3 joins them
        deliver(vc.sender, vc)
    assert r.view == 1 and r.in_view_change
    asg1 = ((1, d0, crypto[1].sign(vote_signing_bytes(chain, 1, 1, d0))),)
    nv1 = m.sign(crypto[1], chain, m.NEWVIEW, 1, (1, tuple(x.encode() for x in vc1), asg1))
    deliver(1, nv1)
    assert r.view == 1 and not r.in_view_change
    assert any(x.kind == m.PREPARE and x.body == (1, 1, d0) for x in sent)

    # View 2 (primary 2): its NEW-VIEW re-proposes nothing (the view-1 prepares were lost, the VIEW-CHANGEs
    # that make it carry no entry), so the primary proposes a fresh block d2 at height 1. Its pre-prepare
    # overtakes the NEW-VIEW: replica 3 is still in the view change when it arrives.
    vc2 = [m.sign(crypto[i], chain, m.VIEWCHANGE, i, (2, 0, b"", (), ())) for i in range(3)]
    for vc in vc2[:2]:
        deliver(vc.sender, vc)
    assert r.view == 2 and r.in_view_change
    payload = b"blk:1:2"
    d2 = c.app.digest(payload)
    deliver(2, m.sign(crypto[2], chain, m.PREPREPARE, 2, (2, 1, d2, payload)))
    assert not any(x.kind in (m.PREPARE, m.COMMIT) and x.body[0] == 2 for x in sent)  # no vote in a view change
    nv2 = m.sign(crypto[2], chain, m.NEWVIEW, 2, (2, tuple(x.encode() for x in vc2), ()))
    deliver(2, nv2)
    assert r.view == 2 and not r.in_view_change
    for i in (0, 1):  # the peers' prepares make the height prepared
        deliver(i, m.sign(crypto[i], chain, m.PREPARE, i, (2, 1, d2)))

    mine = [(x.kind, x.body[:3]) for x in sent if x.kind in (m.PREPARE, m.COMMIT) and x.body[0] == 2]
    # the pre-prepare was accepted on entry: PREPARE first, then (prepared on 2f+1 votes) COMMIT
    assert mine == [(m.PREPARE, (2, 1, d2)), (m.COMMIT, (2, 1, d2))]


def test_invalid_preprepare_buffered_before_new_view_is_never_committed():
    """The same order with a block the application refuses: no PREPARE and no COMMIT, whatever the peers."""
    c = Cluster(auto=False)
    chain = c.config.chain_id
    crypto = [c.crypto(i) for i in range(4)]
    r = c.replicas[ME]
    sent = []

    def deliver(sender, msg):
        sent.extend(_sent(_actions(r, sender, msg)))

    vc2 = [m.sign(crypto[i], chain, m.VIEWCHANGE, i, (2, 0, b"", (), ())) for i in range(3)]
    for vc in vc2[:2]:
        deliver(vc.sender, vc)
    assert r.view == 2 and r.in_view_change
    payload = b"not a block"
    d2 = c.app.digest(payload)
    deliver(2, m.sign(crypto[2], chain, m.PREPREPARE, 2, (2, 1, d2, payload)))
    deliver(2, m.sign(crypto[2], chain, m.NEWVIEW, 2, (2, tuple(x.encode() for x in vc2), ())))
    assert r.view == 2 and not r.in_view_change
    for i in (0, 1):
        deliver(i, m.sign(crypto[i], chain, m.PREPARE, i, (2, 1, d2)))
    assert not [x for x in sent if x.kind in (m.PREPARE, m.COMMIT) and x.body[0] == 2]
