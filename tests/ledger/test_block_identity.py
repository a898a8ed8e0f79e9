"""Block identity depends only on what was agreed (the proposal), never on which commit certificate a node
holds: honest members routinely hold certificates from different views (or signer sets) for one block, and
must still hold byte-identical headers, prev_hash chains and checkpoint digests (issue 9, defect 3)."""

from __future__ import annotations

import hashlib

from ledger_helpers import T0, Consortium

from node.ledger.chain import Chain
from node.ledger.store import Store
from node.ledger.verifier import make_receipt, verify_chain, verify_receipt


def test_certificates_from_different_views_give_byte_identical_blocks(tmp_path):
    c = Consortium()
    chains = [Chain(c.genesis, Store(tmp_path / f"n{i}")) for i in range(2)]
    batches = [[c.tx(i % 4) for i in range(5)] for _ in range(4)]
    for height, txs in enumerate(batches, start=1):
        payload = chains[0].build_proposal(height, height % 4, T0, txs)
        blocks = []
        for chain, view, signers in zip(chains, (height, height + 3), ((0, 1, 2), (1, 2, 3)), strict=True):
            chain.validate_proposal(height, payload, now_ms=T0)
            blocks.append(chain.execute(payload, c.certificate(chain, payload, height, view, signers)))
        a, b = blocks
        assert a.encode() == b.encode() and a.hash == b.hash
    heads = [ch.store.head for ch in chains]
    assert heads[0] == heads[1]
    for ch in chains:
        assert verify_chain(ch.store, c.genesis) == len(batches)
        tx, _header = verify_receipt(make_receipt(ch.store, hashlib.sha256(batches[2][1]).digest()),
                                     c.genesis.member_pubkeys, c.genesis.chain_id)
        assert tx.raw == batches[2][1]
        ch.store.close()
