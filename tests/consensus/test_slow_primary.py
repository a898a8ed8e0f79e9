"""A slow or censoring primary is replaced (per-request timers, throughput floor), but never on one member's
word: f+1 complaints in a view start the view change (issue 9, defect 6)."""

from consensus import messages as m
from consensus.events import Executed, MessageReceived, ProposalReady, WorkPending


def test_a_censored_request_replaces_the_primary_once_f_plus_1_backups_held_it_too_long(make_cluster):
    c = make_cluster(auto=False)  # the primary (0) never proposes: it censors
    for i in range(c.n):
        c.handle(i, WorkPending(1, b"tx-of-hospital-b", 0.5))
    for i in (1, 2, 3):
        assert c.timers[i][("request", 0)] == c.config.request_timeout - 0.5
    c.fire(1, "request")
    c.run()
    assert c.replicas[1].stats["complaints_sent"] == 1
    assert all(r.view == 0 and not r.in_view_change for r in c.replicas), "one complaint forced a view change"
    c.fire(2, "request")
    c.run()
    assert all(r.view == 1 and not r.in_view_change for r in c.replicas)
    # the new primary gets the full bound again
    assert c.timers[2][("request", 1)] == c.config.request_timeout


def test_a_byzantine_member_alone_cannot_force_a_view_change_by_complaining(make_cluster):
    c = make_cluster(auto=False)
    wire = m.sign(c.crypto(3), "test", m.COMPLAIN, 3, (0,)).encode()
    for _ in range(3):
        for i in range(3):
            c.handle(i, MessageReceived(3, wire))
    c.run()
    assert all(r.view == 0 and not r.in_view_change for r in c.replicas)
    # a complaint for another view is not kept
    later = m.sign(c.crypto(3), "test", m.COMPLAIN, 3, (1,)).encode()
    c.handle(1, MessageReceived(3, later))
    assert c.replicas[1].stats["drop_stale_complaint"] == 1


def test_the_request_timer_follows_the_oldest_pending_tx(make_cluster):
    c = make_cluster(auto=False)
    r = c.replicas[1]
    c.handle(1, WorkPending(2, b"tx1", 3.0))
    assert c.timers[1][("request", 0)] == c.config.request_timeout - 3.0
    assert c.handle(1, WorkPending(3, b"tx1", 4.0)) == []  # same tx, still waiting: its timer runs on
    c.handle(1, WorkPending(1, b"tx2", 0.5))  # tx1 committed: the next oldest gets its own deadline
    assert c.timers[1][("request", 0)] == c.config.request_timeout - 0.5
    c.handle(1, WorkPending(0, b"", 0.0))  # nothing pending: no timer, no complaint
    assert ("request", 0) not in c.timers[1]
    c.handle(1, WorkPending(1, b"tx3", 60.0))  # held far too long already (e.g. across a restart)
    assert c.timers[1][("request", 0)] == 0.0
    c.fire(1, "request")
    assert r.stats["complaints_sent"] == 1 and r.view == 0


class Backlog:
    """A world with a standing backlog: every tick the primary may answer `allow` proposal requests."""

    def __init__(self, c) -> None:
        self.c, self.answered, self.executed = c, set(), [0] * c.n

    def tick(self, allow: int) -> None:
        c = self.c
        p = c.replicas[1].primary
        for h in sorted(set(c.requests[p]) - self.answered)[:allow]:
            self.answered.add(h)
            c.handle(p, ProposalReady(h, b"blk:%d:%d:%s" % (h, p, b"x" * 200)))
        c.run()
        for i in range(c.n):
            for a in c.commits[i][self.executed[i]:]:
                c.handle(i, Executed(a.height, b"s%d" % a.height))
            self.executed[i] = len(c.commits[i])
            c.handle(i, WorkPending(100, b"the-backlog", 1.0))
        c.run()
        for i in range(c.n):
            c.fire(i, "tick")
        c.run()


def _backlog_then_new_primary(make_cluster, allow_in_view_1):
    c = make_cluster(auto=False, pipeline=4, request_timeout=1000.0)
    world = Backlog(c)
    for _ in range(12):
        world.tick(allow=4)
    assert min(c.heights()) >= 30 and all(r.view == 0 for r in c.replicas)
    for i in (1, 2, 3):  # primary 0 crashes for a moment: an ordinary view change
        c.fire(i, "progress")
    c.run()
    assert all(r.view == 1 and not r.in_view_change for r in c.replicas)
    world.answered.clear()
    for k in range(16):
        world.tick(allow=allow_in_view_1(k))
    return c


def test_a_slow_primary_below_the_throughput_floor_is_replaced(make_cluster):
    c = _backlog_then_new_primary(make_cluster, lambda k: 1 if k % 4 == 0 else 0)
    assert all(r.view >= 2 for r in c.replicas)
    assert sum(r.stats["throughput_floor"] for r in c.replicas) >= 2


def test_a_primary_as_fast_as_the_last_views_is_kept(make_cluster):
    c = _backlog_then_new_primary(make_cluster, lambda k: 4)
    assert all(r.view == 1 and not r.in_view_change for r in c.replicas)
    assert sum(r.stats["throughput_floor"] for r in c.replicas) == 0
