"""Mempool backpressure: client txs are refused with a retry delay once the backlog exceeds ~1.5 s of commits."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from node.runtime.mempool import IDLE_RETRY, RETRY_MAX, RETRY_MIN, Mempool, MempoolFull


def _txs(n: int, tag: str = "") -> list[tuple[bytes, bytes]]:
    raws = [f"tx-{tag}-{i}".encode() for i in range(n)]
    return [(hashlib.sha256(r).digest(), r) for r in raws]


def test_refuses_once_backlog_exceeds_two_seconds_of_commits(tmp_path):
    pool = Mempool(tmp_path / "m", 100_000, min_backlog=100, drain_seconds=2.0)
    # 5 s of commits at 1,000 tx/s: the limit is 2,000 waiting txs.
    for t in range(50):
        pool.remove([b"x"] * 100, now=100.0 + t * 0.1)
    now = 105.0
    assert 900 < pool.commit_rate(now) < 1100
    pool.add_many(_txs(1999), now)
    assert pool.overload(now) is None
    pool.add_many(_txs(50, "b"), now)
    over = pool.overload(now)
    assert over is not None
    assert over.backlog == 2049 and 1800 <= over.limit <= 2200
    # Come back when about half the limit is left: ~1 s at 1,000 tx/s.
    assert 0.8 <= over.retry_after <= 1.3
    assert "retry after" in over.message()


def test_idle_or_stalled_chain_has_the_floor_and_a_short_delay(tmp_path):
    pool = Mempool(None, 100_000, min_backlog=500)
    pool.add_many(_txs(499), 0.0)
    assert pool.overload(0.0) is None  # nothing ever committed: the floor still lets a block form
    pool.add_many(_txs(1, "z"), 0.0)
    over = pool.overload(0.0)
    assert over is not None and over.commit_rate == 0 and over.retry_after == IDLE_RETRY


def test_commit_rate_forgets_old_blocks(tmp_path):
    pool = Mempool(None, 1000)
    pool.remove([b"x"] * 1000, now=0.0)
    assert pool.commit_rate(0.5) == 1000  # one block: spread over at least 1 s
    assert pool.commit_rate(6.0) == 0.0


def test_hard_cap_still_raises(tmp_path):
    pool = Mempool(None, 10, min_backlog=5)
    pool.add_many(_txs(10), 0.0)
    try:
        pool.add_many(_txs(1, "over"), 0.0)
    except MempoolFull:
        pass
    else:
        raise AssertionError("a full mempool admitted a tx")
    assert pool.overload(0.0) is not None


@given(commits=st.lists(st.tuples(st.floats(0, 10), st.integers(0, 3000)), max_size=40),
       backlog=st.integers(0, 20_000), now=st.floats(0, 20))
def test_overload_answer_is_always_usable(commits, backlog, now):
    """Whatever the history, the answer is None or a delay within bounds that a client can honour."""
    pool = Mempool(None, 100_000, min_backlog=100)
    for t, n in sorted(commits):
        pool.remove([b"x"] * n, now=t)
    pool._txs.update((i.to_bytes(4, "big"), (b"", 0.0)) for i in range(backlog))
    over = pool.overload(max(now, max((t for t, _ in commits), default=0)))
    if backlog < 100:
        assert over is None
    if over is not None:
        assert RETRY_MIN <= over.retry_after <= RETRY_MAX
        assert over.backlog >= over.limit or over.backlog >= pool.max_txs


def test_proposals_take_the_txs_held_longest_even_after_regossip(tmp_path):
    pool = Mempool(tmp_path / "m", 1000)
    first, second = _txs(3, "a"), _txs(3, "b")
    pool.add_many(first, 1.0)
    pool.add_many(second, 2.0)
    pool.touch([h for h, _ in first], 10.0)  # re-gossiped: must not send the oldest to the back of the line
    assert pool.take_for_proposal(4, height=1) == [r for _, r in first] + [second[0][1]]
    assert pool.oldest()[0] == first[0][0]
    assert pool.take_for_proposal(4, height=2) == [r for _, r in second[1:]]  # in flight skipped
