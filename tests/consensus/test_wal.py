from consensus import messages as m
from consensus import wal as walrec
from consensus.actions import Broadcast, Persist
from consensus.events import MessageReceived, ProposalReady, WorkPending


def _sent(actions, kind):
    return [m.decode(a.data, 4, 1 << 20, 64) for a in actions
            if isinstance(a, Broadcast) and m.decode(a.data, 4, 1 << 20, 64).kind == kind]


def test_restarted_backup_never_prepares_a_conflicting_digest(make_cluster):
    c = make_cluster(auto=False)
    cr0 = c.crypto(0)
    a, b = b"blk:1:0:a", b"blk:1:0:b"
    pp_a = m.sign(cr0, "test", m.PREPREPARE, 0, (0, 1, c.app.digest(a), a)).encode()
    pp_b = m.sign(cr0, "test", m.PREPREPARE, 0, (0, 1, c.app.digest(b), b)).encode()
    c.perform(2, c.replicas[2].handle(MessageReceived(0, pp_a)))
    restarted = c.restart(2)  # kill -9, restart from the WAL
    # it re-sends the very same prepare for digest a ...
    again = _sent(restarted, m.PREPARE)
    assert [x.body[2] for x in again] == [c.app.digest(a)]
    # ... and refuses to prepare b at the same view and height (the equivocating primary's other proposal)
    out = c.replicas[2].handle(MessageReceived(0, pp_b))
    assert _sent(out, m.PREPARE) == []


def test_restarted_primary_never_proposes_twice_at_a_height(make_cluster):
    c = make_cluster(auto=False)
    r = c.replicas[0]
    c.perform(0, r.handle(WorkPending(3)))
    c.perform(0, r.handle(ProposalReady(1, b"blk:1:0")))
    c.restart(0)
    r = c.replicas[0]
    out = r.handle(WorkPending(3))
    heights = [a.height for a in out if type(a).__name__ == "RequestProposal"]
    assert 1 not in heights
    assert r.handle(ProposalReady(1, b"blk:1:0:other")) == []


def test_restart_keeps_view_prepared_certificates_and_commits_nothing_twice(make_cluster):
    c = make_cluster()
    c.work(3)
    h = c.heights()[2]
    c.down.add(0)
    for i in (1, 2, 3):
        c.handle(i, WorkPending(1))
        c.fire(i, "progress")
    c.run()
    h = c.heights()[2]
    c.restart(2)
    r = c.replicas[2]
    assert r.view == 1 and not r.in_view_change and r.last_committed == h
    c.down.discard(0)
    c.work(3)
    assert c.heights()[2] > h
    assert [x.height for x in c.commits[2]] == list(range(1, c.heights()[2] + 1))  # each height once


def test_persist_records_roundtrip_and_compact():
    recs = [walrec.view_record(1), walrec.vote_record(1, 5, b"d" * 32, b"p"),
            walrec.commit_record(1, 5, b"d" * 32, ((0, b"s"), (1, b"t"), (2, b"u"))),
            walrec.stable_record(8, b"s" * 32, ((0, b"a"),)), walrec.vote_record(1, 9, b"e" * 32, None),
            b"\xc1torn"]
    assert walrec.decode(recs[2])[4] == ((0, b"s"), (1, b"t"), (2, b"u"))
    kept = walrec.compact(recs)
    assert recs[1] not in kept and recs[2] not in kept and recs[4] in kept and recs[3] in kept
    assert recs[0] in kept
    assert [walrec.is_stable_record(r) for r in recs] == [False, False, False, True, False, False]
    replayed = walrec.replay(recs)
    assert replayed.view == 1 and replayed.in_view_change and replayed.bad_records == 1
    assert replayed.stable == (8, b"s" * 32, ((0, b"a"),)) and len(replayed.votes) == 2 and len(replayed.commits) == 1


def test_torn_wal_record_is_counted_not_fatal(make_cluster):
    c = make_cluster(auto=False)
    c.wal[1].append(b"\x93\x01")
    c.restart(1)
    assert c.replicas[1].stats["bad_wal_record"] == 1


def test_every_signed_vote_is_preceded_by_its_persist(make_cluster):
    c = make_cluster()
    seen = []
    orig = c.perform

    def spy(i, actions):
        persisted = 0
        for a in actions:
            if isinstance(a, Persist):
                persisted += 1
            elif isinstance(a, Broadcast):
                kind = m.decode(a.data, 4, 1 << 20, 64).kind
                if kind in (m.PREPREPARE, m.PREPARE, m.COMMIT):
                    seen.append(persisted > 0)
        orig(i, actions)

    c.perform = spy
    c.work(4)
    assert seen and all(seen)
