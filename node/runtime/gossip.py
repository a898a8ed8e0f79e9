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

from node.ledger.chain import Chain, ProposalError, TxNotAuthorised
from node.ledger.sigbatch import verify_txs
from node.ledger.tx import MAX_TX_BYTES, Tx, TxError, decode_tx
from node.runtime import peerscore
from node.runtime.mempool import Mempool, MempoolFull
from node.runtime.peerscore import PeerScores
from node.runtime.settings import MempoolConfig

log = logging.getLogger("radchain.gossip")

CHANNEL = "tx"
MAX_BATCH_TXS = 4096
RESEND_ON_CONNECT = MAX_BATCH_TXS  # pending txs sent to a member whose session was (re)established
MAX_BATCH_BYTES = 8 << 20
# Compact proposals (node.ledger.block): a replica asks the proposer for the txs a proposal names that it
# does not hold. A request is at most MAX_FETCH_TXS hashes (a block's worth: max_block_txs is 2,000 by
# default); an answer at most MAX_BATCH_BYTES, only txs whose hash was asked for.
FETCH_CHANNEL = "txfetch"
MAX_FETCH_TXS = 4096
FETCH_TIMEOUT = 2.0
# An answer stays under the network's response limit (network.PeerNetwork max_response, 4 MiB); a longer
# list is answered in part and the asker asks again for the rest.
MAX_FETCH_ANSWER_BYTES = 3 << 20


class FetchError(ValueError):
    """A tx-fetch request is not one bin of at most MAX_FETCH_TXS 32-byte hashes."""


def encode_fetch_request(hashes: list[bytes]) -> bytes:
    return msgpack.packb(b"".join(hashes), use_bin_type=True)


def decode_fetch_request(data: bytes) -> list[bytes]:
    """Request frame -> distinct tx hashes; raises FetchError only. Bounded before allocating."""
    if type(data) is not bytes or len(data) > 32 * MAX_FETCH_TXS + 5:
        raise FetchError("fetch: not bytes, or over the size limit")
    try:
        blob = msgpack.unpackb(data, raw=False, max_bin_len=32 * MAX_FETCH_TXS, max_str_len=0,
                               max_array_len=0, max_map_len=0, max_ext_len=0)
    except Exception as exc:
        raise FetchError(f"fetch: undecodable ({exc.__class__.__name__})") from None
    if type(blob) is not bytes or not blob or len(blob) % 32:
        raise FetchError("fetch: must be one bin of 32-byte tx hashes")
    return list(dict.fromkeys(blob[i:i + 32] for i in range(0, len(blob), 32)))


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
                 cfg: MempoolConfig, on_admitted: Callable[[], None], scores: PeerScores | None = None,
                 send: Callable[[str, str, bytes], bool] | None = None):
        self._broadcast = broadcast
        self._send = send  # to one member (on_peer_up)
        self.chain = chain
        self.mempool = mempool
        self.cfg = cfg
        self._on_admitted = on_admitted
        self.scores = scores if scores is not None else PeerScores()
        self._outbox: list[bytes] = []
        self._wake = trio.Event()  # a full batch waits: flush without waiting out the interval
        self._pending = trio.Event()  # the outbox has txs
        self._verify_limiter = trio.CapacityLimiter(1)  # one checking thread: batches stay in order
        self.stats = {"batches_out": 0, "batches_in": 0, "txs_in": 0, "txs_admitted": 0, "txs_refused": 0,
                      "batches_malformed": 0, "batches_dropped": 0, "rebroadcast": 0,
                      "resent_on_connect": 0}

    def admit(self, items: list[tuple[bytes, bytes]]) -> list[bytes]:
        """Admit already-checked (hash, raw) txs from this node's clients; durable and queued for gossip.
        Raises MempoolFull."""
        fresh = self.mempool.add_many(items, time.monotonic())
        if fresh:
            self._outbox.extend(self.mempool.get(h) for h in fresh)  # once each, however often submitted
            self._pending.set()
            if len(self._outbox) >= self.cfg.gossip_batch:
                self._wake.set()
            self._on_admitted()
        return fresh

    def _open_batch(self, peer: str, data: bytes) -> list[bytes] | None:
        """The batch's raw txs, or None when it is dropped: a blocked member's batch unread, a malformed one
        counted and scored. Shared by the inline and the threaded admission paths so both refuse alike."""
        self.stats["batches_in"] += 1
        if self.scores.blocked(peer):
            self.stats["batches_dropped"] += 1
            self.scores.dropped(peer)
            return None
        try:
            raws = decode_batch(data)
        except BatchError as exc:
            self.stats["batches_malformed"] += 1
            self.scores.penalize(peer, peerscore.MALFORMED, "malformed tx batch", exc)
            return None
        self.stats["txs_in"] += len(raws)
        return raws

    def on_batch(self, peer: str, data: bytes) -> None:
        """A batch from a member: every tx is checked (signature, authorisation) before admission.

        Never raises for anything the member sent: a malformed batch or tx is counted and scored against
        the member (node.runtime.peerscore), and each tx is handled on its own. Batches of a blocked member are
        dropped unread."""
        raws = self._open_batch(peer, data)
        if raws is None:
            return
        has = self.chain.has_committed  # the seen filter first: nearly every gossiped tx is new
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
        self._admit_checked(peer, items, bad, first_error, len(raws))

    async def on_batch_threaded(self, peer: str, data: bytes) -> None:
        """on_batch, with the signature checks of the batch's new txs in a worker thread (one hand-off per
        batch): decoding before and authorisation after stay on the event loop. Same outcomes as on_batch
        for every input; a tx whose signature fails is refused exactly as there and never cached."""
        await self._check_batches([(peer, data)])

    async def on_batches_threaded(self, frames: list[tuple[str, bytes]]) -> None:
        """on_batch_threaded for several batches (from one member or several) with ONE worker-thread hand-off
        for all their signature checks: a hand-off costs tens of microseconds of trio and OS scheduling, and
        with a flush every 5 ms a batch often holds a handful of txs. Each batch is still judged, scored and
        admitted as its own (same outcomes as on_batch_threaded of each in turn)."""
        await self._check_batches(frames)

    async def _check_batches(self, frames: list[tuple[str, bytes]]) -> None:
        chain, mempool, has = self.chain, self.mempool, self.chain.has_committed
        work = []  # [peer, txs in the batch, [(tx, verified earlier by this node)], bad, first error]
        unchecked: list[Tx] = []
        for peer, data in frames:
            raws = self._open_batch(peer, data)
            if raws is None:
                continue
            bad, first_error = 0, None
            checked: list[tuple[Tx, bool]] = []  # in batch order
            for raw in raws:
                h = hashlib.sha256(raw).digest()
                if h in mempool or has(h):
                    continue
                tx = chain.verified(h)
                if tx is not None:
                    checked.append((tx, True))
                    continue
                try:
                    tx = decode_tx(raw, hash=h, verify=False)
                    chain.refuse_unauthorised(tx)  # a stranger's key costs no signature check (Chain.check_tx)
                except TxNotAuthorised:
                    self.stats["txs_refused"] += 1
                    continue
                except TxError as exc:
                    self.stats["txs_refused"] += 1
                    bad += 1
                    first_error = first_error or exc
                    continue
                checked.append((tx, False))
                unchecked.append(tx)
            work.append((peer, len(raws), checked, bad, first_error))
        if unchecked:
            oks = iter(await trio.to_thread.run_sync(verify_txs, unchecked, chain.verified,
                                                     chain.remember_verified, limiter=self._verify_limiter))
        for peer, count, checked, bad, first_error in work:
            items = []
            for tx, known in checked:
                if not known and not next(oks):
                    self.stats["txs_refused"] += 1
                    bad += 1
                    first_error = first_error or TxError("signature: does not verify under the client key")
                    continue
                if tx.hash in mempool or has(tx.hash):
                    continue  # admitted or committed while the thread worked (or earlier in this group)
                try:
                    chain.check_verified_tx(tx)  # authorisation against the state of now, after the await
                except TxNotAuthorised:
                    self.stats["txs_refused"] += 1
                    continue
                except TxError as exc:
                    self.stats["txs_refused"] += 1
                    bad += 1
                    first_error = first_error or exc
                    continue
                items.append((tx.hash, tx.raw))
            self._admit_checked(peer, items, bad, first_error, count)

    def _admit_checked(self, peer: str, items: list[tuple[bytes, bytes]], bad: int, first_error, count: int) -> None:
        if bad:
            # One report per batch, whatever the number of bad txs in it: the log stays one line.
            self.scores.penalize(peer, min(peerscore.MALFORMED, bad * peerscore.BAD_TX),
                                 "invalid txs in a gossip batch", f"{bad} of {count}, first: {first_error}")
        if not items:
            return
        try:
            # In memory only: the origin persisted these before acknowledging them (node.runtime.mempool); a
            # compact proposal naming them puts them on disk before this node votes (keep_for_vote).
            fresh = self.mempool.add_many(items, time.monotonic(), durable=False)
        except MempoolFull:
            self.stats["txs_refused"] += len(items)
            return  # the origin keeps them and re-gossips later
        self.stats["txs_admitted"] += len(fresh)
        if fresh:
            self._on_admitted()

    # ------------------------------------------------------------------ compact proposals: tx fetch
    def keep_for_vote(self, txs: list[Tx]) -> None:
        """Chain.keep_txs: a compact proposal this node is about to vote on names these txs. Gossip left them
        in memory only, and after a kill -9 the vote in the WAL relies on holding them: on disk now. A tx
        committed before (a duplicate the block will mark so) is in the store already and stays out of
        the mempool. Raises ProposalError when the disk is full: no vote this node could not honour."""
        durable, committed = self.mempool.durable, self.chain.has_committed  # the seen filter spares LevelDB
        try:
            self.mempool.add_many([(tx.hash, tx.raw) for tx in txs if not durable(tx.hash) and not committed(tx.hash)],
                                  time.monotonic(), force=True)
        except MempoolFull as exc:
            raise ProposalError(f"cannot keep the proposal's txs: {exc}") from None
        except Exception as exc:  # LevelDB failing otherwise: said here, since the replica only counts it
            log.error("cannot keep the txs of a compact proposal, so no vote on it: %s", exc, exc_info=exc)
            raise ProposalError(f"cannot keep the proposal's txs: {exc}") from None

    async def serve_fetch(self, peer: str, data: bytes) -> bytes:
        """A member asks for txs by hash (it lacks them to validate our proposal): the ones this node holds,
        in the order asked, within MAX_FETCH_ANSWER_BYTES. Unknown hashes are left out, not an error (a tx that
        committed and was pruned, or a guess). A malformed request is scored against the member."""
        self.stats["fetch_requests"] = self.stats.get("fetch_requests", 0) + 1
        if self.scores.blocked(peer):
            self.scores.dropped(peer)
            return msgpack.packb([])
        try:
            hashes = decode_fetch_request(data)
        except FetchError as exc:
            self.scores.penalize(peer, peerscore.MALFORMED, "malformed tx fetch request", exc)
            return msgpack.packb([])
        out, size, raw_of = [], 0, self.chain.tx_raw
        for h in hashes:
            raw = raw_of(h)
            if raw is None:
                continue
            if size + len(raw) + 5 > MAX_FETCH_ANSWER_BYTES:
                break
            out.append(raw)
            size += len(raw) + 5
        self.stats["fetch_served"] = self.stats.get("fetch_served", 0) + len(out)
        return msgpack.packb(out, use_bin_type=True)

    async def fetch(self, net, peer: str, hashes: list[bytes], timeout: float = FETCH_TIMEOUT) -> int:
        """Ask `peer` (the proposer) for the txs `hashes` names; admit the ones whose hash was asked for and
        whose signature verifies into the mempool (durably, past its size limit: a proposal this node may
        vote for must still resolve after a restart). Returns how many were admitted; never raises for
        what the peer sends or does not send (a silent proposer costs `timeout`, then the proposal fails
        validation and the view change proceeds as for any invalid proposal)."""
        wanted = set(hashes[:MAX_FETCH_TXS])
        if not wanted:
            return 0
        self.stats["fetches"] = self.stats.get("fetches", 0) + 1
        try:
            reply = await net.request(peer, FETCH_CHANNEL, encode_fetch_request(list(wanted)), timeout=timeout)
        except Exception as exc:  # unreachable, timed out, refused: the network layer raises several types
            self.stats["fetch_failed"] = self.stats.get("fetch_failed", 0) + 1
            log.info("tx fetch from %s failed: %s", peer, exc)
            return 0
        try:
            raws = decode_batch(reply)
        except BatchError as exc:
            self.scores.penalize(peer, peerscore.MALFORMED, "malformed tx fetch answer", exc)
            return 0
        bad, first_error, fresh = 0, None, []
        for raw in raws:
            h = hashlib.sha256(raw).digest()
            if h not in wanted:
                bad += 1
                first_error = first_error or "a tx that was not asked for (hash mismatch)"
                continue
            wanted.discard(h)  # once each
            try:
                fresh.append(decode_tx(raw, hash=h, verify=False))
            except TxError as exc:
                bad += 1
                first_error = first_error or exc
        oks = await trio.to_thread.run_sync(verify_txs, fresh, limiter=self._verify_limiter) if fresh else []
        items = []
        for tx, ok in zip(fresh, oks, strict=True):
            if not ok:
                bad += 1
                first_error = first_error or "signature: does not verify under the client key"
                continue
            # Signature checked: cached so validation does not check it again. Authorisation is judged by
            # proposal validation (a tx of a revoked key makes the proposal invalid, not this answer).
            self.chain.remember_verified(tx)
            items.append((tx.hash, tx.raw))
        if bad:
            self.scores.penalize(peer, min(peerscore.MALFORMED, bad * peerscore.BAD_TX),
                                 "invalid txs in a tx fetch answer", f"{bad} of {len(raws)}, first: {first_error}")
        if not items:
            return 0
        try:
            admitted = self.mempool.add_many(items, time.monotonic(), force=True)
        except MempoolFull:  # the disk is full: validation refuses the proposal, a view change follows
            return 0
        self.stats["fetched_txs"] = self.stats.get("fetched_txs", 0) + len(items)
        return len(admitted)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._flush_loop)
            nursery.start_soon(self._rebroadcast_loop)

    def flush_now(self) -> None:
        """Send what waits in the outbox at once: the primary calls it before it proposes, so the txs of
        its own clients reach the replicas ahead of the compact proposal that names them (same peer
        connections, sent first) instead of making them wait for the next flush or fetch them."""
        while self._outbox:
            batch, self._outbox = self._outbox[:self.cfg.gossip_batch], self._outbox[self.cfg.gossip_batch:]
            self._broadcast(CHANNEL, msgpack.packb(batch, use_bin_type=True))
            self.stats["batches_out"] += 1

    async def _flush_loop(self) -> None:
        # At most one flush per gossip_interval (txs arriving meanwhile share a batch), none while the outbox is
        # empty: an idle node does not wake 200 times a second, and a tx on a quiet node goes out at once.
        last = float("-inf")
        while True:
            if not self._outbox:
                await self._pending.wait()
                if not self._outbox:  # set for txs that flush_now or the last round already sent
                    self._pending = trio.Event()
                    continue
            wait = last + self.cfg.gossip_interval - trio.current_time()
            if wait > 0 and len(self._outbox) < self.cfg.gossip_batch:
                with trio.move_on_after(wait):
                    await self._wake.wait()
            self._wake, self._pending = trio.Event(), trio.Event()  # what is set from here on is flushed below
            if self._outbox:  # flush_now may have sent it already: then the next quiet tx still goes at once
                last = trio.current_time()
            while self._outbox:
                batch, self._outbox = self._outbox[:self.cfg.gossip_batch], self._outbox[self.cfg.gossip_batch:]
                self._broadcast(CHANNEL, msgpack.packb(batch, use_bin_type=True))
                self.stats["batches_out"] += 1
                await trio.lowlevel.checkpoint()

    def on_peer_up(self, peer: str) -> None:
        """A session with `peer` was (re)established: send it every pending tx, oldest first, as CometBFT's
        mempool reactor does for a new peer. Frames written just before a connection was found dead are
        lost with it; without this, the txs among them waited for the rebroadcast timer, and the primary
        could not propose them meanwhile. Bounded by RESEND_ON_CONNECT; the peer drops what it holds."""
        if self._send is None:
            return
        pending = self.mempool.stale(float("inf"), limit=RESEND_ON_CONNECT)
        for i in range(0, len(pending), self.cfg.gossip_batch):
            self._send(peer, CHANNEL, msgpack.packb(pending[i:i + self.cfg.gossip_batch], use_bin_type=True))
        self.stats["resent_on_connect"] += len(pending)

    async def _rebroadcast_loop(self) -> None:
        # Checked every second (at most) for txs pending longer than rebroadcast_after: a tx whose gossip
        # was lost waits rebroadcast_after + 1 s at most, not up to twice rebroadcast_after. Under a backlog
        # of old txs the volume stays what it was with one check per rebroadcast_after (MAX_BATCH_TXS).
        every = min(1.0, self.cfg.rebroadcast_after)
        limit = max(self.cfg.gossip_batch, int(MAX_BATCH_TXS * every / self.cfg.rebroadcast_after))
        while True:
            await trio.sleep(every)
            now = time.monotonic()
            stale = self.mempool.stale(now - self.cfg.rebroadcast_after, limit=limit)
            if stale:
                self.stats["rebroadcast"] += len(stale)
                for i in range(0, len(stale), self.cfg.gossip_batch):
                    self._broadcast(CHANNEL, msgpack.packb(stale[i:i + self.cfg.gossip_batch], use_bin_type=True))
                self.mempool.touch([hashlib.sha256(r).digest() for r in stale], now)
