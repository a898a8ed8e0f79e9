from consensus import messages as m
from consensus.actions import Broadcast, Commit, Persist, RequestProposal
from consensus.certificate import Certificate, verify_certificate
from consensus.events import MessageReceived, ProposalReady, WorkPending


def test_blocks_commit_with_offline_checkable_certificates(make_cluster):
    c = make_cluster()
    c.work(5)
    assert c.heights() == [c.heights()[0]] * 4 and c.heights()[0] >= 4
    for i in range(4):
        for h, a in enumerate(c.commits[i], start=1):
            assert a.height == h
            cert = Certificate.decode(a.certificate)
            verify_certificate(cert, c.members, "test", height=h, digest=a.digest)
            assert a.digest == c.app.digest(a.payload)
    assert [a.digest for a in c.commits[0]] == [a.digest for a in c.commits[3]]


def test_primary_pipelines_up_to_the_configured_depth(make_cluster):
    c = make_cluster(auto=False, pipeline=3)
    actions = c.replicas[0].handle(WorkPending(10))
    assert [a.height for a in actions if isinstance(a, RequestProposal)] == [1, 2, 3]
    # a backup never requests proposals
    assert not any(isinstance(a, RequestProposal) for a in c.replicas[1].handle(WorkPending(10)))


def test_unrequested_proposal_is_dropped_and_counted(make_cluster):
    c = make_cluster(auto=False)
    r = c.replicas[0]
    assert r.handle(ProposalReady(7, b"blk:7:0")) == []
    assert r.stats["drop_unrequested_proposal"] == 1


def test_persist_comes_before_the_signed_message_it_covers(make_cluster):
    c = make_cluster(auto=False)
    c.replicas[0].handle(WorkPending(1))
    actions = c.replicas[0].handle(ProposalReady(1, b"blk:1:0"))
    kinds = [type(a) for a in actions]
    assert kinds.index(Persist) < kinds.index(Broadcast)


def test_prepare_quorum_needs_2f_plus_1_votes(make_cluster):
    c = make_cluster(auto=False)
    chain, crypto = "test", [c.crypto(i) for i in range(4)]
    payload = b"blk:1:0"
    d = c.app.digest(payload)
    r = c.replicas[3]
    pp = m.sign(crypto[0], chain, m.PREPREPARE, 0, (0, 1, d, payload)).encode()
    out = r.handle(MessageReceived(0, pp))
    assert any(isinstance(a, Broadcast) for a in out)  # its own prepare: 2 votes now (primary + self)
    assert not any(isinstance(a, Broadcast) and m.decode(a.data, 4, 1 << 20, 64).kind == m.COMMIT for a in out)
    p1 = m.sign(crypto[1], chain, m.PREPARE, 1, (0, 1, d)).encode()
    out = r.handle(MessageReceived(1, p1))  # 3 = 2f+1: prepared, sends commit
    commits = [a for a in out if isinstance(a, Broadcast) and m.decode(a.data, 4, 1 << 20, 64).kind == m.COMMIT]
    assert len(commits) == 1
    assert r.handle(MessageReceived(1, p1)) == [] and r.stats["duplicate"] >= 1  # a duplicate counts once
    c1 = m.sign(crypto[1], chain, m.COMMIT, 1, (0, 1, d)).encode()
    assert not any(isinstance(a, Commit) for a in r.handle(MessageReceived(1, c1)))  # 2 commits
    c2 = m.sign(crypto[2], chain, m.COMMIT, 2, (0, 1, d)).encode()
    out = r.handle(MessageReceived(2, c2))
    assert [a.height for a in out if isinstance(a, Commit)] == [1]


def test_watermarks_bound_accepted_heights(make_cluster):
    c = make_cluster(auto=False, checkpoint_interval=4, watermark_window=8)
    r = c.replicas[1]
    crypto0 = c.crypto(0)
    for h, reason in ((9, "drop_above_window"), (0, "drop_stale_height")):
        payload = b"blk:%d:0" % h
        pp = m.sign(crypto0, "test", m.PREPREPARE, 0, (0, h, c.app.digest(payload), payload)).encode()
        assert r.handle(MessageReceived(0, pp)) == []
        assert r.stats[reason] == 1
    assert r.high_watermark == 8


def test_checkpoints_become_stable_and_garbage_collect(make_cluster):
    c = make_cluster(checkpoint_interval=2, watermark_window=4, pipeline=2)
    for _ in range(6):
        c.work(3)
    assert min(c.heights()) >= 8
    for r in c.replicas:
        assert r.stable_checkpoint >= 6
        assert all(h > r.stable_checkpoint for h in r.slots)
        assert r.stats["stable_checkpoints"] >= 3


def test_invalid_proposal_is_not_prepared(make_cluster):
    c = make_cluster(auto=False)
    payload = b"nonsense"
    pp = m.sign(c.crypto(0), "test", m.PREPREPARE, 0, (0, 1, c.app.digest(payload), payload)).encode()
    assert c.replicas[2].handle(MessageReceived(0, pp)) == []
    assert c.replicas[2].stats["drop_invalid_proposal"] == 1


def test_quorums_intersect_in_an_honest_member_for_any_n():
    from consensus.certificate import max_faulty, quorum
    assert [quorum(n) for n in (1, 3, 4, 5, 7, 10)] == [1, 2, 3, 4, 5, 7]
    for n in range(1, 40):
        q, f = quorum(n), max_faulty(n)
        assert 2 * q - n >= f + 1  # two quorums share f+1 members: at least one honest
        assert n - f >= q          # the honest members alone make a quorum (liveness)
