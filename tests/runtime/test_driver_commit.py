"""The driver's side of Commit: a height block sync already stored still yields Executed (with the stored,
certificate-independent block hash), so the replica casts its checkpoint vote for it (issue 9, defect 5)."""

from __future__ import annotations

import time

from ledger_helpers import T0, Consortium

from consensus import actions as A
from consensus import events as E
from consensus.config import Config
from consensus.crypto import Ed25519Crypto
from consensus.replica import Replica
from node.ledger.chain import Chain
from node.ledger.store import Store
from node.runtime.driver import ConsensusDriver, SyncedBlocks
from node.runtime.mempool import Mempool
from node.runtime.wal_file import WriteAheadLog


def _driver(tmp_path, c: Consortium, chain: Chain) -> ConsensusDriver:
    cfg = Config(chain_id=c.genesis.chain_id, members=c.genesis.member_pubkeys)
    replica = Replica(cfg, 1, Ed25519Crypto(bytes(c.keys[1]), cfg.members), chain, last_executed=chain.height)
    return ConsensusDriver(replica, chain, WriteAheadLog(tmp_path / "wal"), send=lambda i, d: None,
                           broadcast=lambda d: None, build_proposal=lambda h, must: None,
                           mempool_count=lambda: 0, on_commit=lambda b, p: None,
                           on_state_transfer=lambda h, peers: None, on_evidence=lambda e: None)


def test_commit_of_a_height_sync_already_stored_still_reports_executed(tmp_path):
    c = Consortium()
    chain = Chain(c.genesis, Store(tmp_path / "chain"))
    driver = _driver(tmp_path, c, chain)
    payload = chain.build_proposal(1, 0, T0, [c.tx(0)])
    chain.validate_proposal(1, payload, now_ms=T0)
    synced_cert = c.certificate(chain, payload, 1, view=0)
    block = chain.execute(payload, synced_cert)  # what block sync did
    # consensus commits the same block with a certificate from another view
    commit = A.Commit(1, payload, chain.proposal_digest(payload), c.certificate(chain, payload, 1, view=2,
                                                                                signers=(1, 2, 3)))
    event = driver._perform_one(commit)
    assert event == E.Executed(1, block.hash)
    assert chain.height == 1 and chain.store.get_block(1) == block
    # a different digest at a stored height is not acknowledged
    other = chain.build_proposal(1, 0, T0, [c.tx(1)])
    assert driver._perform_one(A.Commit(1, other, chain.proposal_digest(other), synced_cert)) is None
    chain.store.close()


async def test_commits_queued_behind_a_gap_are_replayed_after_sync(tmp_path):
    c = Consortium()
    chain = Chain(c.genesis, Store(tmp_path / "chain"))
    driver = _driver(tmp_path, c, chain)
    source = Chain(c.genesis, Store(tmp_path / "source"))
    blocks = []
    for h in (1, 2):
        payload = source.build_proposal(h, 0, T0, [c.tx(h)])
        source.validate_proposal(h, payload, now_ms=T0)
        blocks.append((h, payload, c.certificate(source, payload, h)))
        source.execute(payload, blocks[-1][2])
    _h2, p2, c2 = blocks[1]
    assert driver._perform_one(A.Commit(2, p2, chain.proposal_digest(p2), c2)) is None  # waits for height 1
    await driver._apply_synced(SyncedBlocks(blocks, announce=False))
    assert chain.height == 2
    replay = driver._queue.popleft()
    assert driver._perform_one(replay.commit) == E.Executed(2, source.store.get_block(2).hash)
    for ch in (chain, source):
        ch.store.close()



def test_work_pending_names_the_tx_held_longest_even_after_regossip(tmp_path):
    """The replica's per-request timer follows the oldest tx the node holds; re-gossip (touch) must not make
    a tx the primary keeps leaving out look fresh again."""
    c = Consortium()
    chain = Chain(c.genesis, Store(tmp_path / "chain"))
    pool = Mempool(None, 100)
    driver = _driver(tmp_path, c, chain)
    driver._oldest_pending, driver._mempool_count = pool.oldest, pool.available
    assert driver._work_pending() == E.WorkPending(0)
    t0 = time.monotonic() - 7.0
    pool.add_many([(b"a" * 32, b"tx-a"), (b"b" * 32, b"tx-b")], t0)
    pool.touch([b"a" * 32], time.monotonic())  # re-gossiped: moves to the back of the gossip order
    ev = driver._work_pending()
    assert ev.count == 2 and ev.oldest == b"a" * 32 and 7.0 <= ev.oldest_age < 60
    pool.remove([b"a" * 32])
    assert driver._work_pending().oldest == b"b" * 32
    pool.remove([b"b" * 32])
    assert driver._work_pending() == E.WorkPending(0)
    chain.store.close()
