"""The consensus driver under load: a bounded queue, consensus first, timers that do not blame a busy node.

A real Replica (backup 1 of the 4-member test consortium), Chain, LevelDB store and WAL; the peers are
absent, so what the driver sends goes nowhere.
"""

from __future__ import annotations

import trio

from consensus import actions as A
from consensus.config import Config
from consensus.crypto import Ed25519Crypto
from consensus.replica import TICK, Replica
from node.ledger.chain import Chain
from node.ledger.store import Store
from node.runtime import driver as D
from node.runtime.wal_file import WriteAheadLog


def _driver(consortium, tmp_path) -> D.ConsensusDriver:
    store = Store(tmp_path / "chain")
    chain = Chain(consortium.genesis, store)
    wal = WriteAheadLog(tmp_path / "wal", fsync=False)
    members = consortium.genesis.member_pubkeys
    replica = Replica(Config(chain_id=consortium.genesis.chain_id, members=members, progress_timeout=2.0), 1,
                      Ed25519Crypto(consortium.keys[1], members), chain, wal=(), last_executed=0)
    return D.ConsensusDriver(replica, chain, wal, send=lambda to, data: None, broadcast=lambda data: None,
                             build_proposal=lambda h, empty: None, mempool_count=lambda: 0,
                             on_commit=lambda block, payload: None, on_state_transfer=lambda t, p: None,
                             on_evidence=lambda e: None)


def test_queue_holds_at_most_max_messages_and_drops_the_rest(consortium, tmp_path):
    driver = _driver(consortium, tmp_path)
    accepted = [driver.message(2, b"\x00" * 8) for _ in range(D.MAX_QUEUED_MESSAGES + 5)]
    assert accepted.count(False) == 5 and accepted[-1] is False
    assert driver.queued == D.MAX_QUEUED_MESSAGES
    assert driver.stats["dropped_messages"] == 5
    # Own events are never dropped: a full queue still takes a sync result and a mempool wake-up.
    driver.mempool_changed()
    driver.synced([])
    assert driver.queued == D.MAX_QUEUED_MESSAGES + 2


async def test_timers_discount_execution_and_allow_for_the_primarys(consortium, tmp_path, autojump_clock):
    driver = _driver(consortium, tmp_path)
    progress = ("progress", 0)
    now = trio.current_time()
    driver._perform_one(A.SetTimer(progress, 2.0))
    driver._perform_one(A.SetTimer(TICK, 1.0))
    assert driver._timers[progress] == now + 2.0
    driver._busy_for(0.01)  # a short step (one of a flood of messages) holds nothing back
    assert driver._timers[progress] == now + 2.0
    driver._busy_for(0.5)  # this node spent 0.5 s on a heavy block: not time its peers were late
    assert driver._timers[progress] == now + 2.5
    assert driver._timers[TICK] == now + 1.0  # retransmission keeps its pace
    # Re-armed after heavy blocks: the primary, executing the blocks it pipelines, gets that much longer.
    driver._perform_one(A.SetTimer(progress, 2.0))
    assert driver._timers[progress] == now + 2.0 + D.EXEC_ALLOWANCE_BLOCKS * 0.5
    driver._perform_one(A.SetTimer(TICK, 1.0))
    assert driver._timers[TICK] == now + 1.0


async def test_a_firing_overtaken_by_a_rearm_never_reaches_the_replica(consortium, tmp_path):
    driver = _driver(consortium, tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        timer = ("probe",)  # unknown to the replica: it counts every firing it is handed
        token = object()
        driver._fired[timer] = token
        driver._push(D._Fired(timer, token))
        driver._perform_one(A.SetTimer(timer, 60.0))  # re-armed before the queued firing is handled
        await driver.yield_to_consensus(max_wait=5)
        assert driver.stats["stale_timers"] == 1
        assert driver.replica.stats["drop_unknown_timer"] == 0
        # A firing still current is delivered.
        driver._perform_one(A.CancelTimer(timer))
        token = object()
        driver._fired[timer] = token
        driver._push(D._Fired(timer, token))
        await driver.yield_to_consensus(max_wait=5)
        assert driver.replica.stats["drop_unknown_timer"] == 1
        nursery.cancel_scope.cancel()


async def test_work_yielding_to_consensus_waits_for_the_queue_but_not_forever(consortium, tmp_path, autojump_clock):
    driver = _driver(consortium, tmp_path)
    for _ in range(50):
        driver.message(2, b"junk")
    # The driver is not running: the queue never drains, yet the caller goes on after max_wait.
    started = trio.current_time()
    await driver.yield_to_consensus(max_wait=0.025)
    assert trio.current_time() - started == 0.025
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        for _ in range(50):
            driver.message(2, b"junk")
        await driver.yield_to_consensus(max_wait=60)
        assert driver.queued == 0  # returned because the replica had handled everything, not on timeout
        assert trio.current_time() - started < 1
        nursery.cancel_scope.cancel()
