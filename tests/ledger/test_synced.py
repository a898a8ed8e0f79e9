"""Synced blocks checked off the event loop (node.ledger.chain.prepare_synced) and applied with
Chain.execute(synced=...): the same block as the full path, never under a member set other than the one the
executed chain fixes, and a tx taken from the verified cache only when it is the very tx named."""

from __future__ import annotations

import dataclasses

import pytest
from ledger_helpers import T0, Consortium

from node.ledger.chain import Chain, ChainError, SyncedBlockError, prepare_synced, prepare_synced_batch
from node.ledger.store import Store


@pytest.fixture
def served(tmp_path):
    c = Consortium()
    chain = Chain(c.genesis, Store(tmp_path / "served"))
    for h in range(1, 4):
        c.commit(chain, [c.tx(h % 4), c.tx((h + 1) % 4)], now=T0 + h)
    blocks = [(h, chain.store.get_payload(h), chain.store.get_certificate(h)) for h in range(1, 4)]
    yield c, chain, blocks
    chain.store.close()


def test_prepared_blocks_execute_to_the_same_chain(tmp_path, served):
    c, honest, blocks = served
    chain = Chain(c.genesis, Store(tmp_path / "client"))
    items = [(h, p, cert, *chain.sync_context(h)[:3]) for h, p, cert in blocks]
    prepared, failure = prepare_synced_batch(items)
    assert failure is None and [b.height for b in prepared] == [1, 2, 3]
    for b in prepared:
        chain.execute(b.payload, b.certificate, synced=b)
    assert [chain.store.get_block(h).hash for h in (1, 2, 3)] == [honest.store.get_block(h).hash for h in (1, 2, 3)]
    chain.store.close()


def test_a_block_checked_against_another_member_set_is_not_applied(tmp_path, served):
    """Same keys (so the certificate verifies) but other voted limits: not the epoch of height 1."""
    c, _honest, blocks = served
    chain = Chain(c.genesis, Store(tmp_path / "client"))
    h, payload, cert = blocks[0]
    epoch, max_txs, max_payload, certain = chain.sync_context(h)
    assert certain
    other = dataclasses.replace(epoch, params=(("max_block_txs", 7),))
    guessed = prepare_synced(h, payload, cert, other, max_txs, max_payload)
    with pytest.raises(ChainError, match="member set"):
        chain.execute(payload, cert, synced=guessed)
    assert chain.height == 0
    chain.store.close()


def test_the_verified_cache_serves_only_the_tx_named(tmp_path, served):
    """A cached tx is used for its own hash only: a certificate-backed block whose tx hash is cached gets
    that tx; an altered tx under the certified header is refused whatever the cache holds."""
    c, _honest, blocks = served
    chain = Chain(c.genesis, Store(tmp_path / "client"))
    h, payload, cert = blocks[0]
    limits = chain.sync_context(h)[:3]
    first = prepare_synced(h, payload, cert, *limits)
    seen = []

    def known(tx_hash):
        seen.append(tx_hash)
        return {t.hash: t for t in first.txs}.get(tx_hash)

    again = prepare_synced(h, payload, cert, *limits, known=known)
    assert [t.hash for t in again.txs] == first.hashes and seen == first.hashes
    with pytest.raises(SyncedBlockError) as err:
        prepare_synced(h, payload[:-1] + bytes([payload[-1] ^ 1]), cert, *limits, known=known)
    assert err.value.peer_fault
    chain.store.close()
