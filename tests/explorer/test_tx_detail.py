"""The explorer's tx page data (node.explorer.data.tx_detail) on a real chain: a tx signed in a batch shows
its place in the batch and, separately, its place in the block; its receipt verifies."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ledger_helpers import CHAIN_ID, T0, Consortium

from node.explorer.data import tx_detail
from node.ledger.genesis import NEW_CHAIN_PARAMS
from node.ledger.tx import sign_bodies, signable_body


@pytest.fixture
def consortium() -> Consortium:
    return Consortium(params=NEW_CHAIN_PARAMS)  # a new chain: batches of up to 16 accepted


def test_a_batched_tx_shows_its_batch_place_and_its_block_place_apart(consortium, chain):
    c = consortium
    bodies = [signable_body({"chain": CHAIN_ID, "type": "instances.accessed", "member": c.name(0), "ts": T0 + n,
                             "nonce": n.to_bytes(16, "big"), "patient": b"p" * 16, "study": b"s" * 16,
                             "user": b"u" * 16, "purpose": "TREAT", "outcome": 0, "action": "R"}, c.keys[0])
              for n in range(3)]
    batch = sign_bodies(bodies, c.keys[0])
    c.commit(chain, [c.tx(1), c.tx(2)] + [tx.raw for tx in batch])  # two txs before the batch in the block
    node = SimpleNamespace(store=chain.store, genesis=c.genesis, chain=chain)
    detail = tx_detail(node, batch[1].hash)
    assert (detail["height"], detail["index"]) == (1, 3)
    assert detail["batch"]["index"] == 1 and detail["batch"]["size"] == 3
    assert detail["batch"]["proof"] == batch[1].proof.hex()
    assert detail["check"]["valid"], detail["check"]
    alone = tx_detail(node, chain.store.get_block(1).tx_hashes[0])  # signed alone
    assert alone["batch"] is None and alone["index"] == 0
