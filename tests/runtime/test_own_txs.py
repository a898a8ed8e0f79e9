"""A member's own txs found again by their body (node.runtime.own_txs): an event submitted again gets the tx
it got before, whichever batch signed it, pending or committed, before or after a restart."""

from __future__ import annotations

import hashlib
import time

import pytest
from ledger_helpers import CHAIN_ID, T0, Consortium

from node.ledger import tx as txmod
from node.ledger.genesis import NEW_CHAIN_PARAMS
from node.ledger.tx import decode_tx, signable_body
from node.ledger.verifier import verify_chain
from node.runtime.mempool import Mempool
from node.runtime.own_txs import OwnTxs


@pytest.fixture
def consortium() -> Consortium:
    return Consortium(params=NEW_CHAIN_PARAMS)  # a new chain: batches of up to 16 accepted


def body(c, n: int, member: int = 0):
    f = {"chain": CHAIN_ID, "type": "instances.accessed", "member": c.name(member), "ts": T0 + n,
         "nonce": n.to_bytes(16, "big"), "patient": b"p" * 16, "study": b"s" * 16, "user": b"u" * 16,
         "purpose": "TREAT", "outcome": 0, "action": "R"}
    return signable_body(f, c.keys[member])


def admit(mempool, txs):
    mempool.add_many([(tx.hash, tx.raw) for tx in txs], time.monotonic())


def test_the_same_events_in_another_batch_get_their_first_txs_pending_committed_and_after_a_restart(
        consortium, chain, tmp_path):
    c = consortium
    key = c.keys[0]
    mempool = Mempool(tmp_path / "mempool", 1000)
    own = OwnTxs(chain, mempool, c.name(0), max_pending=2000)
    first = own.sign([body(c, n) for n in range(6)], key)
    assert len({tx.sig for tx in first}) == 1 and all(tx.proof for tx in first)
    admit(mempool, first)

    # pending: events 1 and 4 again, in a batch with two new ones
    again = own.sign([body(c, 1), body(c, 10), body(c, 4), body(c, 11)], key)
    assert [again[0].hash, again[2].hash] == [first[1].hash, first[4].hash]
    assert again[1].hash not in {tx.hash for tx in first} and again[1].sig == again[3].sig != first[0].sig
    # one event twice in one call: signed once
    twice = own.sign([body(c, 20), body(c, 20)], key)
    assert twice[0].raw == twice[1].raw and twice[0].proof == b""

    # committed, then a restart (a new OwnTxs: nothing in memory; the mempool reopened from disk)
    c.commit(chain, [tx.raw for tx in first[:3]])
    mempool.remove([tx.hash for tx in first[:3]])
    own.on_commit([tx.hash for tx in first[:3]])
    mempool.close()
    mempool = Mempool(tmp_path / "mempool", 1000)
    mempool.restore(chain.store.has_tx, time.monotonic())
    restarted = OwnTxs(chain, mempool, c.name(0), max_pending=2000)
    found = restarted.sign([body(c, 0), body(c, 2), body(c, 5), body(c, 30)], key)
    assert [tx.hash for tx in found[:3]] == [first[0].hash, first[2].hash, first[5].hash]
    assert found[3].hash not in {tx.hash for tx in first}
    for tx in found:  # what it hands back is the tx itself, as stored
        assert decode_tx(tx.raw).hash == tx.hash
    mempool.close()
    # the offline replay (radchain verify-chain) checks the batched txs' signatures and derives the same state
    txmod._BATCHES_OK.clear()  # no signature this process made or checked is taken on trust
    assert verify_chain(chain.store, c.genesis) == 1


def test_only_this_members_txs_are_indexed_and_an_index_entry_names_the_committed_tx(consortium, chain, tmp_path):
    c = consortium
    mempool = Mempool(tmp_path / "mempool", 1000)
    OwnTxs(chain, mempool, c.name(0), max_pending=10)
    ours = OwnTxs(chain, mempool, c.name(0), max_pending=10).sign([body(c, n) for n in range(3)], c.keys[0])
    theirs = [decode_tx(c.tx(1)) for _ in range(2)]
    c.commit(chain, [tx.raw for tx in ours + theirs])
    assert [chain.store.own_tx(hashlib.sha256(tx.body).digest()) for tx in ours] == [tx.hash for tx in ours]
    assert [chain.store.own_tx(hashlib.sha256(tx.body).digest()) for tx in theirs] == [None, None]
    mempool.close()


def test_blocks_executed_without_the_index_are_indexed_when_the_node_starts(consortium, chain, tmp_path):
    """Older code, or an offline tool, executed blocks without writing the O entries: the node's start
    fills them in, so an event committed then and sent again in a batch still finds its tx."""
    c = consortium
    mempool = Mempool(tmp_path / "mempool", 1000)
    signed = OwnTxs(chain, mempool, c.name(0), max_pending=10).sign([body(c, n) for n in range(4)], c.keys[0])
    chain.own_member = None  # as the code before the index
    c.commit(chain, [tx.raw for tx in signed[:2]])
    c.commit(chain, [tx.raw for tx in signed[2:]] + [c.tx(1)])
    assert chain.store.own_index_height(c.name(0)) == 0
    assert all(chain.store.own_tx(hashlib.sha256(tx.body).digest()) is None for tx in signed)
    started = OwnTxs(chain, mempool, c.name(0), max_pending=10)
    assert chain.store.own_index_height(c.name(0)) == 2
    assert [chain.store.own_tx(hashlib.sha256(tx.body).digest()) for tx in signed] == [tx.hash for tx in signed]
    again = started.sign([body(c, 3), body(c, 1), body(c, 9)], c.keys[0])
    assert [again[0].hash, again[1].hash] == [signed[3].hash, signed[1].hash]
    c.commit(chain, [again[2].raw])  # executed with the index on: the marker moves with the block
    assert chain.store.own_index_height(c.name(0)) == 3
    mempool.close()


def test_the_pending_bound_drops_refused_txs_first_not_those_still_in_the_mempool(consortium, chain, tmp_path):
    c = consortium
    mempool = Mempool(tmp_path / "mempool", 1000)
    own = OwnTxs(chain, mempool, c.name(0), max_pending=4)
    kept = own.sign([body(c, n) for n in range(2)], c.keys[0], most=1)
    admit(mempool, kept)
    own.sign([body(c, n) for n in range(10, 20)], c.keys[0], most=1)  # refused: never admitted
    own._recent.clear()  # as after RECENT more txs: only the mempool and the store remain
    again = own.sign([body(c, 0), body(c, 1)], c.keys[0])
    assert [tx.hash for tx in again] == [tx.hash for tx in kept]
    assert len(own._pending) <= 4 and len(own._digest_of) == len(own._pending)
    mempool.close()


def test_a_new_event_costs_no_store_lookup_and_a_committed_one_is_still_found(consortium, chain, tmp_path,
                                                                              monkeypatch):
    """Chain.own_tx's filter: a body never committed is answered from memory (a LevelDB miss per own tx
    more than doubled compaction), and one committed, before or after the filter was rebuilt, is found."""
    c = consortium
    lookups = []
    real = chain.store.own_tx
    monkeypatch.setattr(chain.store, "own_tx", lambda digest: lookups.append(digest) or real(digest))
    mempool = Mempool(tmp_path / "mempool", 1000)
    own = OwnTxs(chain, mempool, c.name(0), max_pending=2000)
    first = own.sign([body(c, n) for n in range(40)], c.keys[0], most=16)  # the chain's max_sign_batch
    assert lookups == []
    c.commit(chain, [tx.raw for tx in first[:20]])  # committed before the rebuild below
    mempools = [Mempool(tmp_path / f"mempool{i}", 1000) for i in (2, 3)]  # empty: nothing pending
    restarted = OwnTxs(chain, mempools[0], c.name(0), max_pending=2000)  # the filter rebuilt from the O keys
    c.commit(chain, [tx.raw for tx in first[20:]])  # executed after the rebuild
    for i, n in enumerate((3, 25, 39)):
        lookups.clear()
        signer = restarted if i < 2 else OwnTxs(chain, mempools[1], c.name(0), max_pending=2000)
        found = signer.sign([body(c, n)] + [body(c, 100 + 50 * i + k) for k in range(50)], c.keys[0])
        assert found[0].hash == first[n].hash
        assert lookups == [hashlib.sha256(first[n].body).digest()]  # 50 new events: none asked the store
    for m in [mempool, *mempools]:
        m.close()
