"""WAL compaction in the driver: a stable checkpoint record, recognised through consensus.wal (the record
format's one home), rewrites the log without what it made obsolete, on disk too."""

from __future__ import annotations

from ledger_helpers import Consortium

from consensus import actions as A
from consensus import wal as consensus_wal
from consensus.config import Config
from consensus.crypto import Ed25519Crypto
from consensus.replica import Replica
from node.ledger.chain import Chain
from node.ledger.store import Store
from node.runtime import driver as D
from node.runtime.wal_file import WriteAheadLog

DIGEST = b"\x11" * 32


def _driver(tmp_path, c: Consortium, chain: Chain) -> D.ConsensusDriver:
    cfg = Config(chain_id=c.genesis.chain_id, members=c.genesis.member_pubkeys)
    replica = Replica(cfg, 1, Ed25519Crypto(bytes(c.keys[1]), cfg.members), chain, last_executed=chain.height)
    return D.ConsensusDriver(replica, chain, WriteAheadLog(tmp_path / "wal"), send=lambda i, d: None,
                             broadcast=lambda d: None, build_proposal=lambda h, must: None,
                             mempool_count=lambda: 0, on_commit=lambda b, p: None,
                             on_state_transfer=lambda h, peers: None, on_evidence=lambda e: None)


def _persist(driver, record: bytes) -> None:
    assert driver._perform_one(A.Persist(record)) is None
    driver.wal.flush()


def test_a_stable_record_compacts_a_large_wal_and_nothing_else_does(tmp_path, monkeypatch):
    c = Consortium()
    chain = Chain(c.genesis, Store(tmp_path / "chain"))
    driver = _driver(tmp_path, c, chain)
    votes = [consensus_wal.vote_record(0, h, DIGEST, None) for h in (1, 2, 3)]
    for record in votes:
        _persist(driver, record)
    stable = consensus_wal.stable_record(2, DIGEST, ((0, b"s" * 64), (1, b"t" * 64), (2, b"u" * 64)))

    _persist(driver, stable)  # under the size threshold: kept whole
    assert driver.wal.records == [*votes, stable]

    monkeypatch.setattr(D, "WAL_COMPACT_BYTES", 0)
    _persist(driver, votes[2])  # a large log, but not a stable record: kept whole
    assert driver.wal.records == [*votes, stable, votes[2]]
    _persist(driver, stable)  # a large log and a stable record: votes at or below height 2 go
    assert driver.wal.records == consensus_wal.compact([*votes, stable, votes[2], stable])
    assert votes[0] not in driver.wal.records and votes[1] not in driver.wal.records
    assert votes[2] in driver.wal.records and stable in driver.wal.records
    kept = list(driver.wal.records)
    driver.wal.close()
    assert WriteAheadLog(tmp_path / "wal").records == kept  # the rewrite reached the file
    chain.store.close()
