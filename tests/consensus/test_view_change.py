import hashlib

from consensus import messages as m
from consensus.events import MessageReceived, ProposalReady, WorkPending
from consensus.viewchange import check_view_change, plan_new_view


def _vc_round(c, silent_primary):
    """Backups time out on a silent primary and move to the next view."""
    c.down.add(silent_primary)
    backups = [i for i in range(c.n) if i != silent_primary]
    for i in backups:
        c.handle(i, WorkPending(1))
    for i in backups:
        assert any(t[0] == "progress" for t in c.timers[i])
        c.fire(i, "progress")
    c.run()


def test_silent_primary_is_replaced_and_the_primary_rotates(make_cluster):
    c = make_cluster()
    c.work(2)
    before = c.heights()[1]
    _vc_round(c, silent_primary=0)
    for i in (1, 2, 3):
        assert c.replicas[i].view == 1 and not c.replicas[i].in_view_change
        assert c.replicas[i].primary == 1
    c.work(2)
    assert min(c.heights()[1:]) > before


def test_prepared_block_survives_the_view_change(make_cluster):
    """Replicas prepare a block in view 0, but no commit gets through; the new view re-proposes it."""
    c = make_cluster(auto=False)
    r0 = c.replicas[0]
    c.perform(0, r0.handle(WorkPending(1)))
    c.perform(0, r0.handle(ProposalReady(1, b"blk:1:0")))
    digest = c.app.digest(b"blk:1:0")
    # deliver pre-prepares and prepares, then drop every COMMIT
    while c.queue:
        i, j, data = c.queue.popleft()
        if m.decode(data, 4, 1 << 20, 64).kind == m.COMMIT:
            continue
        c.handle(j, MessageReceived(i, data))
    assert all(r.slots[1].prepared is not None for r in c.replicas)
    assert c.heights() == [0, 0, 0, 0]
    c.auto = True
    _vc_round(c, silent_primary=0)
    for i in (1, 2, 3):
        assert [a.digest for a in c.commits[i]][:1] == [digest]


def _view_change_waits(c, rounds: int) -> list[float]:
    """NEW-VIEWs get lost: the vc timer each further view change arms."""

    def run_dropping_new_views():
        while c.queue:
            i, j, data = c.queue.popleft()
            if m.decode(data, 4, 1 << 20, 64).kind != m.NEWVIEW:
                c.handle(j, MessageReceived(i, data))

    for i in range(4):
        c.handle(i, WorkPending(1))
    for i in (1, 2, 3):
        c.fire(i, "progress")
    run_dropping_new_views()
    waits = []
    for _ in range(rounds):
        k = next(i for i in range(4) if c.replicas[i].in_view_change)
        vc = [t for t in c.timers[k] if t[0] == "vc"]
        assert vc == [("vc", c.replicas[k].view)]
        waits.append(c.timers[k][vc[0]])
        for i in range(4):
            if c.replicas[i].in_view_change:
                c.fire(i, "vc")
        run_dropping_new_views()
    return waits


def test_view_change_timeouts_grow_exponentially(make_cluster):
    """Each further view change without a commit waits twice as long (PBFT sec. 4.5.2)."""
    c = make_cluster(auto=False, progress_timeout=1.0, view_change_timeout=1.0, max_backoff=3)
    waits = _view_change_waits(c, 5)
    assert waits[:4] == [1.0, 2.0, 4.0, 8.0] and waits[4] == 8.0  # capped at 2**max_backoff


def test_view_change_timeout_never_exceeds_30_seconds_with_default_tuning(make_cluster):
    """A hospital does not wait minutes for a view change: the backoff is capped at config.max_timeout."""
    c = make_cluster(auto=False)
    waits = _view_change_waits(c, 7)
    assert waits[:3] == [5.0, 10.0, 20.0] and max(waits) == 30.0 == c.config.max_timeout


def test_lone_replica_does_not_escalate(make_cluster):
    """Without 2f+1 VIEW-CHANGEs for its view, no view-change timer runs: a partitioned replica stays put."""
    c = make_cluster(auto=False)
    c.down.update({0, 1, 2})
    c.handle(3, WorkPending(1))
    c.fire(3, "progress")
    c.run()
    assert c.replicas[3].view == 1 and c.replicas[3].in_view_change
    assert not any(t[0] == "vc" for t in c.timers[3])


def test_f_plus_1_view_changes_pull_a_replica_along(make_cluster):
    c = make_cluster(auto=False)
    for i in (1, 2):
        c.handle(i, WorkPending(1))
        c.fire(i, "progress")
    c.run()
    # replica 3 had no work and no timer, but 2 = f+1 others asked for view 1: it joins, and view 1 starts
    assert all(c.replicas[i].view == 1 for i in range(4))
    assert not c.replicas[1].in_view_change  # replica 1 is the new primary and sent NEW-VIEW


def test_view_change_proof_checks(make_cluster):
    c = make_cluster(auto=False)
    cr = [c.crypto(i) for i in range(4)]
    d = c.app.digest(b"blk:1:0")
    votes = tuple((i, cr[i].sign(m.vote_signing_bytes("test", 0, 1, d))) for i in range(3))
    good = m.sign(cr[1], "test", m.VIEWCHANGE, 1, (1, 0, b"", (), ((1, 0, d, m.ENTRY_PREPARED, votes),)))
    assert check_view_change(good, "test", cr[0], 4, 3, 16, 64) is None
    short = m.sign(cr[1], "test", m.VIEWCHANGE, 1, (1, 0, b"", (), ((1, 0, d, m.ENTRY_PREPARED, votes[:2]),)))
    assert check_view_change(short, "test", cr[0], 4, 3, 16, 64) == "entry certificate"
    forged = votes[:2] + ((3, bytes(64)),)
    bad = m.sign(cr[1], "test", m.VIEWCHANGE, 1, (1, 0, b"", (), ((1, 0, d, m.ENTRY_PREPARED, forged),)))
    assert check_view_change(bad, "test", cr[0], 4, 3, 16, 64) == "entry certificate"
    dup = votes[:2] + (votes[0],)
    bad = m.sign(cr[1], "test", m.VIEWCHANGE, 1, (1, 0, b"", (), ((1, 0, d, m.ENTRY_PREPARED, dup),)))
    assert check_view_change(bad, "test", cr[0], 4, 3, 16, 64) == "entry certificate"
    future = m.sign(cr[1], "test", m.VIEWCHANGE, 1, (1, 0, b"", (), ((1, 1, d, m.ENTRY_PREPARED, votes),)))
    assert check_view_change(future, "test", cr[0], 4, 3, 16, 64) is not None
    fake_stable = m.sign(cr[1], "test", m.VIEWCHANGE, 1, (1, 16, b"x" * 32, votes, ()))
    assert check_view_change(fake_stable, "test", cr[0], 4, 3, 16, 64) == "stable checkpoint proof"


def test_new_view_plan_takes_the_highest_view_proof():
    def vc(sender, entries, stable=0):
        return m.Message(m.VIEWCHANGE, sender, (5, stable, b"", (), tuple(entries)), b"")
    a = vc(0, [(1, 0, b"A", 0, ()), (3, 2, b"C", 0, ())])
    b = vc(1, [(1, 3, b"B", 0, ())])
    c = vc(2, [])
    plan = plan_new_view([a, b, c])
    assert plan.assignments == ((1, b"B"), (3, b"C"))  # height 2 is a gap the new primary fills
    assert plan_new_view([c, b, a]) == plan


def test_new_primary_fills_a_gap_below_a_reproposed_height(make_cluster):
    c = make_cluster(auto=False, pipeline=2)
    r0 = c.replicas[0]
    c.perform(0, r0.handle(WorkPending(2)))
    c.perform(0, r0.handle(ProposalReady(1, b"blk:1:0")))
    c.perform(0, r0.handle(ProposalReady(2, b"blk:2:0")))
    while c.queue:  # height 1's pre-prepare and every COMMIT get lost
        i, j, data = c.queue.popleft()
        msg = m.decode(data, 4, 1 << 20, 64)
        if msg.kind == m.COMMIT or (msg.kind == m.PREPREPARE and msg.body[1] == 1):
            continue
        c.handle(j, MessageReceived(i, data))
    c.down.add(0)
    for i in (1, 2, 3):
        c.handle(i, WorkPending(0 if i == 1 else 1))
    for i in (2, 3):
        c.fire(i, "progress")
    c.run()
    r1 = c.replicas[1]
    assert r1.view == 1 and r1.is_primary and not r1.in_view_change
    assert r1.highest_proposed == 2
    assert 1 in c.requests[1]  # the gap is requested although replica 1 has no work of its own
    c.handle(1, ProposalReady(1, b"blk:1:1"))
    c.run()
    assert [a.payload for a in c.commits[2]] == [b"blk:1:1", b"blk:2:0"]


def test_preprepare_that_overtakes_its_new_view_is_voted_on_entry(make_cluster):
    c = make_cluster(auto=False)
    for i in (1, 2, 3):
        c.handle(i, WorkPending(1))
    c.fire(1, "progress")
    c.fire(2, "progress")
    c.fire(3, "progress")
    new_views = []
    while c.queue:  # hold back the NEW-VIEW to replica 3
        i, j, data = c.queue.popleft()
        if j == 3 and m.decode(data, 4, 1 << 20, 64).kind == m.NEWVIEW:
            new_views.append((i, j, data))
            continue
        c.handle(j, MessageReceived(i, data))
    r1 = c.replicas[1]
    assert r1.view == 1 and not r1.in_view_change
    c.down.add(0)  # replica 3's prepare is needed for the quorum
    c.perform(1, r1.handle(ProposalReady(1, b"blk:1:1")))
    c.run()  # replica 3, still in view change, receives the pre-prepare for view 1 first
    assert c.replicas[3].in_view_change
    i, j, data = new_views[0]
    c.handle(j, MessageReceived(i, data))
    c.run()
    assert c.heights()[3] == 1 and c.heights()[1] == 1 and c.heights()[2] == 1


def test_view_change_timer_counts_members_already_past_the_view(make_cluster):
    """Replicas 1 and 3 want view 1; replica 0 already wants view 2 and no longer repeats its VIEW-CHANGE
    for view 1. 2f+1 members gave up on view 0, so the timer runs and they move on instead of waiting."""
    c = make_cluster(auto=False)
    c.down.update({0, 1, 2, 3})
    for i in (0, 1, 3):
        c.handle(i, WorkPending(1))
        c.fire(i, "progress")
    c.replicas[0].start_view_change(2)  # as if its own timer had expired after a lost quorum
    c.queue.clear()
    vc = {i: c.replicas[i].view_changes.mine for i in (0, 1, 3)}
    c.handle(1, MessageReceived(3, vc[3]))
    assert not any(t[0] == "vc" for t in c.timers[1])  # 2 of 3 for view 1: not yet
    c.handle(1, MessageReceived(0, vc[0]))
    assert ("vc", 1) in c.timers[1]


def test_new_view_is_forwarded_even_by_a_replica_in_a_later_view_change(make_cluster):
    c = make_cluster(auto=False)
    for i in (1, 2, 3):
        c.handle(i, WorkPending(1))
        c.fire(i, "progress")
    c.run()
    r2 = c.replicas[2]
    assert r2.view == 1 and not r2.in_view_change
    nv = r2.view_changes.entered_wire
    r2.start_view_change(2)
    c.queue.clear()
    # a replica still waiting for view 1 reports it; replica 2, now in a view change to 2, forwards NEW-VIEW 1
    status = m.sign(c.crypto(3), "test", m.STATUS, 3, (1, True, 0, 0)).encode()
    out = r2.handle(MessageReceived(3, status))
    assert any(getattr(a, "data", None) == nv and getattr(a, "to", None) == 3 for a in out)


def _run_holding_payloads_for(c, lagging: int, held: list, hold_commits: bool = False) -> None:
    """Deliver everything except what carries a block's payload to `lagging` (a backup behind on the
    primary's link, whose 2f+1 small COMMITs overtake the primary's large PRE-PREPARE); those are kept in
    `held`, in order."""
    payload_kinds = {m.PREPREPARE, m.PAYLOAD} | ({m.COMMIT} if hold_commits else set())
    while c.queue:
        i, j, data = c.queue.popleft()
        if j == lagging and m.decode(data, 4, 1 << 20, 64).kind in payload_kinds:
            held.append((i, j, data))
            continue
        c.handle(j, MessageReceived(i, data))


def test_a_backup_whose_next_block_is_certified_waits_for_its_payload_instead_of_changing_view(make_cluster):
    c = make_cluster()
    c.target = 1
    for i in range(4):
        c.handle(i, WorkPending(1))
    held: list = []
    _run_holding_payloads_for(c, 3, held)
    decided = c.heights()[0]
    assert decided >= 1 and c.heights() == [decided, decided, decided, 0]
    assert c.replicas[3].slots[1].certificate is not None  # the quorum decided block 1; its payload is held
    r3 = c.replicas[3]
    fetches = r3.stats["fetch_sent"]
    c.fire(3, "progress")
    assert r3.view == 0 and not r3.in_view_change
    assert r3.stats["progress_timeout"] == 0 and r3.stats["progress_waited_certified"] == 1
    assert any(t[0] == "progress" for t in c.timers[3])  # it keeps watching the primary
    assert r3.stats["fetch_sent"] == fetches + 1  # it asks its peers again, although this tick already asked
    assert sum(1 for i, _j, d in c.queue if i == 3 and m.decode(d, 4, 1 << 20, 64).kind == m.FETCH) == 3
    c.queue.extend(held)  # the payload gets through at last
    c.run()
    assert c.heights() == [decided] * 4
    assert [a.digest for a in c.commits[3]] == [a.digest for a in c.commits[0]]
    assert all(r.view == 0 for r in c.replicas)


def test_a_backup_without_the_next_blocks_certificate_still_changes_view(make_cluster):
    """The rule above is narrow: with no certificate for its next block the backup cannot tell a lagging link
    from a primary that stalls it, and votes for a view change as before."""
    c = make_cluster()
    c.target = 1
    for i in range(4):
        c.handle(i, WorkPending(1))
    _run_holding_payloads_for(c, 3, [], hold_commits=True)
    assert c.replicas[3].slots[1].certificate is None
    c.fire(3, "progress")
    assert c.replicas[3].in_view_change and c.replicas[3].stats["progress_timeout"] == 1


class _LateClockApp:
    """An application whose clock would refuse the block now (a payload that arrives late)."""

    def digest(self, payload: bytes) -> bytes:
        return hashlib.sha256(payload).digest()

    def validate(self, height: int, payload: bytes) -> bool:
        return False


def test_a_certified_payload_is_delivered_without_being_validated_again(make_cluster):
    """A backup holds the primary's PRE-PREPARE without its payload (a retransmission carries none), then the
    block's certificate from the others' COMMITs; the payload arrives so late that this replica's own
    validation would refuse it now. 2f+1 members decided the block, so it is delivered as it is."""
    c = make_cluster()
    c.target = 1
    for i in range(4):
        c.handle(i, WorkPending(1))
    held: list = []
    _run_holding_payloads_for(c, 3, held, hold_commits=True)
    decoded = [(i, j, d, m.decode(d, 4, 1 << 20, 64)) for i, j, d in held]
    pp = next(msg for _i, _j, _d, msg in decoded if msg.kind == m.PREPREPARE and msg.body.height == 1)
    r3 = c.replicas[3]
    c.handle(3, MessageReceived(0, m.encode(m.PREPREPARE, 0, m.PrePrepare(0, 1, pp.body.digest, None), pp.sig)))
    assert r3.slots[1].pending is not None and r3.slots[1].certificate is None
    r3.app = _LateClockApp()  # from now on this replica's clock refuses the block
    for i, j, d, msg in decoded:
        if msg.kind == m.COMMIT and msg.body.height == 1:
            c.handle(j, MessageReceived(i, d))
    assert r3.slots[1].certificate is not None and r3.last_committed == 0
    c.run()  # the payload its fetches asked for arrives
    assert r3.last_committed >= 1 and c.commits[3][0].digest == c.commits[0][0].digest == pp.body.digest


def test_the_view_change_snapshot_names_the_votes_a_backup_held_and_what_it_dropped(make_cluster):
    """Operators read why a member voted against the primary from this snapshot (the driver logs it): here
    every PREPARE reached each backup but no COMMIT got through, so each holds its own COMMIT alone."""
    c = make_cluster(auto=False)
    r0 = c.replicas[0]
    c.perform(0, r0.handle(WorkPending(1)))
    c.perform(0, r0.handle(ProposalReady(1, b"blk:1:0")))
    while c.queue:
        i, j, data = c.queue.popleft()
        if m.decode(data, 4, 1 << 20, 64).kind == m.COMMIT:
            continue
        c.handle(j, MessageReceived(i, data))
    c.handle(1, MessageReceived(2, b"\x00garbage"))  # counted as a drop, never a crash
    c.down.add(0)
    c.handle(1, WorkPending(1))
    c.fire(1, "progress")
    snap = c.replicas[1].view_change_snapshot
    assert snap["last_committed"] == 0 and snap["transfer_target"] is None
    assert snap["slots"] == ["1 p0 P0,1,2,3 C1 $"]
    assert snap["drops"] and all(n > 0 for n in snap["drops"].values())
    assert set(snap["peers_committed"]) <= {0, 2, 3} and all(h == 0 for h in snap["peers_committed"].values())
