import pytest

from consensus import messages as m
from consensus.actions import Commit, ReportEvidence, RequestStateTransfer
from consensus.checkpoints import StableCheckpoint
from consensus.events import MessageReceived, StateTransferred, TimerFired
from consensus.evidence import EvidenceError, verify_evidence


def test_equivocating_primary_becomes_evidence(make_cluster):
    c = make_cluster(auto=False)
    cr0 = c.crypto(0)
    a, b = b"blk:1:0:a", b"blk:1:0:b"
    r = c.replicas[3]
    r.handle(MessageReceived(0, m.sign(cr0, "test", m.PREPREPARE, 0, (0, 1, c.app.digest(a), a)).encode()))
    out = r.handle(MessageReceived(0, m.sign(cr0, "test", m.PREPREPARE, 0, (0, 1, c.app.digest(b), b)).encode()))
    ev = [x for x in out if isinstance(x, ReportEvidence)]
    assert len(ev) == 1 and r.stats["drop_conflicting_preprepare"] == 1
    parsed = verify_evidence(ev[0].evidence, c.crypto(1), "test")
    assert parsed["member"] == 0 and parsed["kind"] == "prepare"
    # reported once, not per retransmission
    assert not any(isinstance(x, ReportEvidence) for x in r.handle(MessageReceived(
        0, m.sign(cr0, "test", m.PREPREPARE, 0, (0, 1, c.app.digest(b), None)).encode())))


def test_conflicting_commit_votes_become_evidence_and_forgeries_do_not(make_cluster):
    c = make_cluster(auto=False)
    cr2 = c.crypto(2)
    r = c.replicas[1]
    d1, d2 = b"1" * 32, b"2" * 32
    r.handle(MessageReceived(2, m.sign(cr2, "test", m.COMMIT, 2, (0, 1, d1)).encode()))
    out = r.handle(MessageReceived(2, m.sign(cr2, "test", m.COMMIT, 2, (0, 1, d2)).encode()))
    (ev,) = [x for x in out if isinstance(x, ReportEvidence)]
    verify_evidence(ev.evidence, c.crypto(0), "test")
    with pytest.raises(EvidenceError):
        verify_evidence(ev.evidence.replace(d2, b"3" * 32), c.crypto(0), "test")
    with pytest.raises(EvidenceError):
        verify_evidence(ev.evidence, c.crypto(0), "other-chain")
    forged = m.encode(m.COMMIT, 2, (0, 1, b"3" * 32), bytes(64))
    assert r.handle(MessageReceived(2, forged)) == []


def test_replica_behind_the_stable_checkpoint_requests_state_transfer(make_cluster):
    c = make_cluster(checkpoint_interval=2, watermark_window=4, pipeline=2)
    c.down.add(3)
    for _ in range(5):
        c.work(2)
    top = min(c.heights()[:3])
    assert top >= 8 and c.heights()[3] == 0
    c.down.discard(3)
    # its STATUS shows it lacks their checkpoints: they send them, a stable checkpoint far above replica 3
    c.fire(3, "tick")
    c.run()
    r3 = c.replicas[3]
    assert c.transfers[3], "no state transfer requested"
    req = c.transfers[3][-1]
    assert isinstance(req, RequestStateTransfer) and req.target_height >= 6 and 3 not in req.peers
    assert r3.state_transfer_pending is not None
    # node/ syncs blocks (with certificates) up to the others' height, then reports it
    synced = c.heights()[0]
    for a in c.commits[0]:
        c.commits[3].append(a)
    c.handle(3, StateTransferred(synced, b"s" * 32))
    assert r3.last_committed == synced and r3.state_transfer_pending is None
    c.work(3)
    assert c.heights()[3] > synced
    assert [a.height for a in c.commits[3]] == list(range(1, c.heights()[3] + 1))


def test_lagging_replica_gets_committed_blocks_pushed(make_cluster):
    c = make_cluster(checkpoint_interval=8, watermark_window=32)
    c.down.add(3)
    c.work(3)
    c.down.discard(3)
    behind = c.heights()[3]
    assert behind < c.heights()[0]
    for _ in range(4):  # status rounds: the peers push Decided blocks to the laggard
        for i in range(4):
            c.fire(i, "tick")
        c.run()
    assert c.heights()[3] == c.heights()[0]
    assert c.replicas[3].stats["drop_bad_certificate"] == 0


def test_state_transfer_timeout_resumes_and_asks_again(make_cluster):
    c = make_cluster(auto=False, checkpoint_interval=2, watermark_window=4)
    r = c.replicas[1]
    r.checkpoints.adopt(StableCheckpoint(4, b"s" * 32, ((0, b""), (2, b""), (3, b""))))
    r.catch_up.request_transfer(4, (0, 2, 3))
    out = r.handle(TimerFired(("transfer",)))
    assert any(isinstance(a, RequestStateTransfer) for a in out)
    assert not any(isinstance(a, Commit) for a in out)
