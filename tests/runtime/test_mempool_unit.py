"""The mempool (node/runtime/mempool.py) on a real LevelDB: a tx acknowledged as pending survives a restart
until a block carries it, nothing is proposed twice while in flight, and the bound holds against a flood."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.runtime.mempool import Mempool, MempoolFull


def item(i: int) -> tuple[bytes, bytes]:
    raw = b"tx-%d" % i
    return hashlib.sha256(raw).digest(), raw


def test_an_acknowledged_tx_survives_a_restart_until_a_block_carries_it(tmp_path):
    pool = Mempool(tmp_path / "mempool", 100)
    fresh = pool.add_many([item(1), item(2), item(3)], now=1.0)
    assert fresh == [item(1)[0], item(2)[0], item(3)[0]]  # durable on return: now the client hears "pending"
    pool.remove([item(2)[0]])  # committed
    pool.close()  # kill -9 would leave the same LevelDB (the write batch is whole or absent)
    again = Mempool(tmp_path / "mempool", 100)
    committed = {item(3)[0]}  # committed in a block this node stored before the mempool delete
    assert again.restore(lambda h: h in committed, now=2.0) == 1
    assert again.get(item(1)[0]) == b"tx-1" and item(3)[0] not in again and item(2)[0] not in again
    again.close()
    third = Mempool(tmp_path / "mempool", 100)
    assert third.restore(lambda h: False, now=3.0) == 1  # the committed entry was deleted from disk too
    third.close()


def test_a_batch_over_the_bound_is_refused_whole_and_nothing_of_it_is_persisted(tmp_path):
    pool = Mempool(tmp_path / "mempool", 3)
    pool.add_many([item(1), item(2)], now=0.0)
    with pytest.raises(MempoolFull):
        pool.add_many([item(3), item(4)], now=0.0)
    assert len(pool) == 2 and item(3)[0] not in pool
    assert pool.add_many([item(1), item(3)], now=0.0) == [item(3)[0]]  # a held tx does not count again
    pool.close()
    again = Mempool(tmp_path / "mempool", 3)
    assert again.restore(lambda h: False, now=0.0) == 3
    again.close()


def test_the_same_tx_repeated_in_one_batch_is_admitted_once_and_does_not_fill_the_pool(tmp_path):
    """An attacker (or a buggy client) repeats one valid tx 100 times in a batch: it is held once, the
    caller is told once, and the copies do not count against the bound (which would refuse the batch)."""
    pool = Mempool(tmp_path / "mempool", 10)
    assert pool.add_many([item(7)] * 100 + [item(8)], now=0.0) == [item(7)[0], item(8)[0]]
    assert len(pool) == 2 and pool.available() == 2
    assert pool.take_for_proposal(100, height=1) == [b"tx-7", b"tx-8"]
    pool.close()


def test_in_flight_txs_are_not_proposed_twice_and_come_back_after_a_view_change():
    pool = Mempool(None, 100)
    pool.add_many([item(i) for i in range(5)], now=0.0)
    first = pool.take_for_proposal(2, height=1)
    second = pool.take_for_proposal(2, height=2)
    assert first == [b"tx-0", b"tx-1"] and second == [b"tx-2", b"tx-3"]
    assert pool.available() == 1
    pool.remove([item(0)[0], item(1)[0]])  # height 1 committed
    pool.release_in_flight(up_to_height=1)  # height 2 still in flight
    assert pool.take_for_proposal(10, height=3) == [b"tx-4"]
    pool.release_in_flight()  # view change: the new primary's proposals start over
    assert pool.take_for_proposal(10, height=3) == [b"tx-2", b"tx-3", b"tx-4"]


ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.lists(st.integers(0, 30), max_size=6)),
    st.tuples(st.just("take"), st.integers(1, 4)),
    st.tuples(st.just("commit"), st.lists(st.integers(0, 30), max_size=4)),
    st.tuples(st.just("release"), st.none()),
    st.tuples(st.just("restart"), st.none()),
), max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops)
def test_any_history_holds_exactly_the_acknowledged_uncommitted_txs(tmp_path_factory, ops):
    """Model check: after any mix of admissions, proposals, commits, view changes and restarts, the pool
    holds exactly what was acknowledged and not committed, never more than its bound, and a proposal
    never repeats a tx that is still in flight."""
    path = tmp_path_factory.mktemp("mp") / "mempool"
    bound = 12
    pool = Mempool(path, bound)
    held: set[bytes] = set()
    committed: set[bytes] = set()
    in_flight: set[bytes] = set()
    height = 0
    for op, arg in ops:
        if op == "add":
            items = [item(i) for i in arg if item(i)[0] not in committed]
            new = {h for h, _ in items} - held
            try:
                fresh = pool.add_many(items, now=0.0)
            except MempoolFull:
                assert len(held) + len(new) > bound
                continue
            assert set(fresh) == new and len(fresh) == len(new)
            held |= new
        elif op == "take":
            height += 1
            taken = {hashlib.sha256(r).digest() for r in pool.take_for_proposal(arg, height)}
            assert not taken & in_flight and taken <= held
            in_flight |= taken
        elif op == "commit":
            hashes = [item(i)[0] for i in arg]
            pool.remove(hashes)
            held -= set(hashes)
            in_flight -= set(hashes)
            committed |= set(hashes)
        elif op == "release":
            pool.release_in_flight()
            in_flight.clear()
        else:
            pool.close()
            pool = Mempool(path, bound)
            pool.restore(committed.__contains__, now=0.0)
            in_flight.clear()
        assert {h for h in held if h in pool} == held and len(pool) == len(held) <= bound
        assert pool.available() == len(held) - len(in_flight)
    pool.close()


ADMITTER = """
import hashlib, sys
from pathlib import Path
from node.runtime.mempool import Mempool
pool = Mempool(Path(sys.argv[1]), 10**6)
i = 0
while True:
    batch = [(hashlib.sha256(b"tx-%d" % j).digest(), b"tx-%d" % j) for j in range(i, i + 50)]
    pool.add_many(batch, now=0.0)
    print("pending", i + 49, flush=True)  # what the RPC answers "pending" for
    i += 50
"""


def test_kill_9_loses_no_tx_the_client_was_told_is_pending(tmp_path):
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", ADMITTER, str(tmp_path / "mempool")],
                            stdout=subprocess.PIPE, text=True, cwd=repo)
    try:
        told = -1
        while told < 2000:
            line = proc.stdout.readline()
            assert line, "admitter exited"
            told = int(line.split()[1])
    finally:
        proc.kill()
        proc.wait()
    pool = Mempool(tmp_path / "mempool", 10**6)
    assert pool.restore(lambda h: False, now=0.0) >= told + 1
    assert all(item(i)[0] in pool for i in range(told + 1))
    assert len(pool) % 50 == 0  # a batch is whole or absent
    pool.close()


@settings(max_examples=200, deadline=None)
@given(blocks=st.lists(st.tuples(st.floats(min_value=0, max_value=3, allow_nan=False), st.integers(0, 2000)),
                       max_size=60),
       later=st.floats(min_value=0, max_value=8, allow_nan=False))
def test_the_commit_rate_kept_as_a_running_sum_is_the_rate_over_the_window(blocks, later):
    """commit_rate (asked on every client call) keeps a running sum; it must equal the plain sum of the txs
    committed in the last RATE_WINDOW seconds, whatever the spacing of the blocks."""
    from node.runtime.mempool import RATE_WINDOW

    pool, now, history = Mempool(None, 100), 100.0, []
    for gap, n in blocks:
        now += gap
        pool.remove([b"x"] * n, now=now)
        history.append((now, n))
        window = [(t, k) for t, k in history if t >= now - RATE_WINDOW]
        span = max(1.0, min(RATE_WINDOW, now - window[0][0]))
        assert pool.commit_rate(now) == pytest.approx(sum(k for _, k in window) / span)
    now += later
    window = [(t, k) for t, k in history if t >= now - RATE_WINDOW]
    expected = sum(k for _, k in window) / max(1.0, min(RATE_WINDOW, now - window[0][0])) if window else 0.0
    assert pool.commit_rate(now) == pytest.approx(expected)
