"""This member's own txs: its clients' events signed in batches, and found again by their body.

A member signs the events its clients submit in one JSON-RPC batch under one signature (node.ledger.tx:
a Merkle root over their bodies, an audit path in each tx), so each other member checks one Ed25519
signature per batch instead of one per tx.

The price is that a tx's wire bytes, and so its hash, depend on the batch it was signed in. An event
submitted again with the same ``event_id`` has the same fields and body (its nonce is a keyed token of the
event_id, node.ledger.intake); signed alone it would get the same signature and hash again, but signed in
another batch it would get another proof, another hash, and be recorded twice. So before signing, a body
whose SHA-256 names a tx of this member that is pending or committed gets that tx back instead:

- the last RECENT txs it signed, here in memory with their wire bytes, whether or not admission took them
  (a resubmission of an event the mempool refused, or that waits in the async queue, gets the same tx);
- pending ones here by hash, refilled from the mempool when the node starts (what it holds is what
  survived the restart);
- committed ones in the store (``O digest -> hash``, written by Chain.execute in the block's own write
  batch, so the index is exactly as durable as the block), asked only when Chain.own_tx's in-memory filter
  of those digests says "maybe": nearly every body is new.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from nacl.signing import SigningKey

from node.ledger.chain import Chain
from node.ledger.tx import MAX_SIGN_BATCH, Tx, TxError, body_digest, decode_tx, sign_bodies
from node.runtime.mempool import Mempool

__all__ = ["OwnTxs", "RECENT"]

log = logging.getLogger("radchain.node")

# ~13 MB of wire bytes: more than the RPC's async queue holds (node.rpc.submit.ASYNC_QUEUE), so a tx waiting
# there (in neither the mempool nor the store yet) is still found
RECENT = 32_768


class OwnTxs:
    def __init__(self, chain: Chain, mempool: Mempool, member: str, max_pending: int):
        self._chain = chain
        self._mempool = mempool
        self._max_pending = max_pending
        # OrderedDicts: evicting the oldest is O(1) (a plain dict's first item is found by skipping the slots
        # its earlier deletions left, 7 us per eviction at this size against 1)
        self._recent: OrderedDict[bytes, bytes] = OrderedDict()  # body digest -> wire bytes, the last RECENT
        self._pending: OrderedDict[bytes, bytes] = OrderedDict()  # body digest -> tx hash, not known committed
        self._digest_of: dict[bytes, bytes] = {}  # tx hash -> body digest, to forget it at commit
        blocks = chain.index_own_txs(member)  # blocks executed without the index (older code, offline tools)
        if blocks:
            log.info("indexed this member's txs by body in %d blocks", blocks)
        for h, raw in mempool.raws():
            try:
                tx = decode_tx(raw, verify=False, hash=h)
            except TxError:  # the mempool holds only txs that decoded: nothing to find by body here
                continue
            if tx.fields["member"] == member:
                self._track(body_digest(tx.body), tx.hash)

    def sign(self, bodies: list[tuple[bytes, dict]], key: SigningKey, most: int = MAX_SIGN_BATCH) -> list[Tx]:
        """One Tx per (body, fields) of node.ledger.tx.signable_body: this member's pending or committed tx
        with that body if there is one, else a new tx, the new ones signed as one batch (at most ``most``
        per signature). A body repeated in the list is signed once."""
        out: list[Tx | None] = [None] * len(bodies)
        new: dict[bytes, tuple[bytes, dict]] = {}
        positions: list[tuple[int, bytes]] = []
        for i, (body, fields) in enumerate(bodies):
            digest = body_digest(body)
            tx = self._existing(digest)
            if tx is not None:
                out[i] = tx
                continue
            new.setdefault(digest, (body, fields))
            positions.append((i, digest))
        if new:
            signed = dict(zip(new, sign_bodies(list(new.values()), key, most), strict=True))
            recent = self._recent
            for digest, tx in signed.items():
                recent[digest] = tx.raw
                self._track(digest, tx.hash)
            while len(recent) > RECENT:
                recent.popitem(last=False)
            for i, digest in positions:
                out[i] = signed[digest]
        assert all(tx is not None for tx in out)
        return out  # type: ignore[return-value]

    def _track(self, digest: bytes, h: bytes) -> None:
        replaced = self._pending.pop(digest, None)  # re-inserted: the newest entry
        if replaced is not None:
            self._digest_of.pop(replaced, None)
        self._pending[digest] = h
        self._digest_of[h] = digest
        mempool = self._mempool
        turns = len(self._pending)
        while len(self._pending) > self._max_pending and turns:  # refused or dropped txs go, oldest first
            turns -= 1
            old, old_h = self._pending.popitem(last=False)
            if old_h in mempool:  # still pending (max_pending is twice the mempool: few go round again)
                self._pending[old] = old_h
            else:
                self._digest_of.pop(old_h, None)

    def on_commit(self, tx_hashes) -> None:
        """A block committed: its txs are found through the store from now on."""
        if not self._digest_of:
            return
        for h in tx_hashes:
            digest = self._digest_of.pop(h, None)
            if digest is not None and self._pending.get(digest) == h:
                del self._pending[digest]

    def _existing(self, digest: bytes) -> Tx | None:
        raw = self._recent.get(digest)
        if raw is not None:
            return decode_tx(raw, verify=False)  # bytes this node signed
        h = self._pending.get(digest)
        if h is not None:
            raw = self._mempool.get(h)
            if raw is None:
                found = self._chain.committed_tx(h)
                raw = found[2] if found is not None else None
            if raw is not None:
                return decode_tx(raw, verify=False, hash=h)  # the bytes this node signed (hash = their SHA-256)
        h = self._chain.own_tx(digest)
        if h is not None:
            found = self._chain.committed_tx(h)
            if found is not None:
                tx = decode_tx(found[2], verify=False, hash=h)
                assert body_digest(tx.body) == digest, f"O index entry for tx {h.hex()} names another body"
                return tx
        return None
