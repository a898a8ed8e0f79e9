"""Transaction gossip: admitted txs travel to every member in batches over the reliable peer streams.

The consortium is a full mesh, so a batch goes straight to every member and is not relayed. What a lost
message (a peer killed mid-write) would drop is covered by re-gossiping txs that wait too long.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

import msgpack
import trio

from node.ledger.chain import Chain, TxNotAuthorised
from node.ledger.tx import MAX_TX_BYTES, TxError
from node.runtime import peerscore
from node.runtime.mempool import Mempool, MempoolFull
from node.runtime.peerscore import PeerScores
from node.runtime.settings import MempoolConfig

log = logging.getLogger("radchain.gossip")

CHANNEL = "tx"
MAX_BATCH_TXS = 4096
MAX_BATCH_BYTES = 8 << 20


class BatchError(ValueError):
    """A tx-gossip frame is not a msgpack array of at most MAX_BATCH_TXS byte strings."""


def decode_batch(data: bytes) -> list[bytes]:
    """Frame -> tx wire bytes (not decoded); raises BatchError only. Sizes are bounded before allocating:
    at most MAX_BATCH_TXS items, each at most MAX_TX_BYTES, no maps, strings or ext at any depth."""
    if type(data) is not bytes or len(data) > MAX_BATCH_BYTES:
        raise BatchError("batch: not bytes, or over the size limit")
    try:
        raws = msgpack.unpackb(data, raw=False, max_array_len=MAX_BATCH_TXS, max_bin_len=MAX_TX_BYTES,
                               max_str_len=0, max_map_len=0, max_ext_len=0)
    except Exception as exc:  # msgpack raises several types (ValueError, ExtraData, FormatError, ...)
        raise BatchError(f"batch: undecodable ({exc.__class__.__name__})") from None
    if type(raws) is not list:
        raise BatchError("batch: must be an array of byte strings")
    for raw in raws:
        if type(raw) is not bytes:
            raise BatchError("batch: must be an array of byte strings")
    return raws


class TxGossip:
    def __init__(self, broadcast: Callable[[str, bytes], int], chain: Chain, mempool: Mempool,
                 cfg: MempoolConfig, on_admitted: Callable[[], None], scores: PeerScores | None = None):
        self._broadcast = broadcast
        self.chain = chain
        self.mempool = mempool
        self.cfg = cfg
        self._on_admitted = on_admitted
        self.scores = scores if scores is not None else PeerScores()
        self._outbox: list[bytes] = []
        self._wake = trio.Event()
        self.stats = {"batches_out": 0, "batches_in": 0, "txs_in": 0, "txs_admitted": 0, "txs_refused": 0,
                      "batches_malformed": 0, "batches_dropped": 0, "rebroadcast": 0}

    def admit(self, items: list[tuple[bytes, bytes]]) -> list[bytes]:
        """Admit already-checked (hash, raw) txs from this node's clients; durable and queued for gossip.
        Raises MempoolFull."""
        fresh = self.mempool.add_many(items, time.monotonic())
        if fresh:
            self._outbox.extend(self.mempool.get(h) for h in fresh)  # once each, however often submitted
            if len(self._outbox) >= self.cfg.gossip_batch:
                self._wake.set()
            self._on_admitted()
        return fresh

    def on_batch(self, peer: str, data: bytes) -> None:
        """A batch from a member: every tx is checked (signature, authorisation) before admission.

        Never raises for anything the member sent: a malformed batch or tx is counted and scored against
        the member (node.runtime.peerscore), and each tx is handled on its own. Batches of a blocked member are
        dropped unread."""
        self.stats["batches_in"] += 1
        if self.scores.blocked(peer):
            self.stats["batches_dropped"] += 1
            self.scores.dropped(peer)
            return
        try:
            raws = decode_batch(data)
        except BatchError as exc:
            self.stats["batches_malformed"] += 1
            self.scores.penalize(peer, peerscore.MALFORMED, "malformed tx batch", exc)
            return
        self.stats["txs_in"] += len(raws)
        has = self.chain.store.has_tx
        items = []
        bad, first_error = 0, None
        for raw in raws:
            h = hashlib.sha256(raw).digest()
            if h in self.mempool or has(h):
                continue
            try:
                self.chain.check_tx(raw)
            except TxNotAuthorised:
                # An honest member can send these: a key revoked after it admitted the tx.
                self.stats["txs_refused"] += 1
                continue
            except TxError as exc:
                self.stats["txs_refused"] += 1
                bad += 1
                first_error = first_error or exc
                continue
            items.append((h, raw))
        if bad:
            # One report per batch, whatever the number of bad txs in it: the log stays one line.
            self.scores.penalize(peer, min(peerscore.MALFORMED, bad * peerscore.BAD_TX),
                                 "invalid txs in a gossip batch", f"{bad} of {len(raws)}, first: {first_error}")
        if not items:
            return
        try:
            fresh = self.mempool.add_many(items, time.monotonic())
        except MempoolFull:
            self.stats["txs_refused"] += len(items)
            return  # the origin keeps them and re-gossips later
        self.stats["txs_admitted"] += len(fresh)
        if fresh:
            self._on_admitted()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._flush_loop)
            nursery.start_soon(self._rebroadcast_loop)

    async def _flush_loop(self) -> None:
        while True:
            with trio.move_on_after(self.cfg.gossip_interval):
                await self._wake.wait()
            self._wake = trio.Event()
            while self._outbox:
                batch, self._outbox = self._outbox[:self.cfg.gossip_batch], self._outbox[self.cfg.gossip_batch:]
                self._broadcast(CHANNEL, msgpack.packb(batch, use_bin_type=True))
                self.stats["batches_out"] += 1
                await trio.lowlevel.checkpoint()

    async def _rebroadcast_loop(self) -> None:
        while True:
            await trio.sleep(self.cfg.rebroadcast_after)
            now = time.monotonic()
            stale = self.mempool.stale(now - self.cfg.rebroadcast_after, limit=MAX_BATCH_TXS)
            if stale:
                self.stats["rebroadcast"] += len(stale)
                for i in range(0, len(stale), self.cfg.gossip_batch):
                    self._broadcast(CHANNEL, msgpack.packb(stale[i:i + self.cfg.gossip_batch], use_bin_type=True))
                self.mempool.touch([hashlib.sha256(r).digest() for r in stale], now)
