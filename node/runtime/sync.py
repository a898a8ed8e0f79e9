"""Block sync: serve committed blocks with their certificates, and catch up from peers.

A node catches up when it starts behind (empty, or back from a crash), when the replica asks for state
transfer, and — as a safety net, so no node ever stays stuck — whenever a peer reports a higher height while
this node's height has not moved. Fetched blocks are executed by the consensus driver (the store's single
writer). Each response is checked in worker threads before the driver sees it (node.ledger.chain.prepare_synced:
certificate, txs against the certified root, each tx decoded once and its signature verified; libsodium
releases the GIL, so the checks of one response run on every core), and fetching, checking and executing run as a
pipeline: while the driver executes a response, the next is being checked and the one after is on its way.
"""

from __future__ import annotations

import logging
import os
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass

import msgpack
import trio

from node.ledger.chain import Chain, SyncedPayload, prepare_synced_batch
from node.runtime import peerscore
from node.runtime.peerscore import PeerScores

log = logging.getLogger("radchain.sync")

CHANNEL = "sync"
MAX_RESPONSE_BYTES = 3 << 20
MAX_BLOCKS_PER_REQUEST = 64
WATCH_INTERVAL = 2.0
STARTUP_RETRY = 0.25
STARTUP_TRIES = 20
CHECK_THREADS = max(1, min(4, os.cpu_count() or 1))  # worker threads checking one sync response
REQUEST_TIMEOUT = 10.0
MAX_REQUEST_BYTES = 256


class SyncError(ValueError):
    """A sync request or response is malformed (every decoder here raises this and nothing else)."""


def _unpack(data: bytes, max_bytes: int, *, max_array: int, max_map: int, max_bin: int, max_str: int):
    if type(data) is not bytes or len(data) > max_bytes:
        raise SyncError("not bytes, or over the size limit")
    try:
        return msgpack.unpackb(data, raw=False, max_array_len=max_array, max_map_len=max_map,
                               max_bin_len=max_bin, max_str_len=max_str, max_ext_len=0)
    except Exception as exc:  # msgpack raises several types (ValueError, ExtraData, FormatError, ...)
        raise SyncError(f"undecodable ({exc.__class__.__name__})") from None


def _is_height(x) -> bool:
    return type(x) is int and 0 <= x < 1 << 63


def decode_request(data: bytes) -> tuple[str, int]:
    """Request frame -> ("status", 0) or ("blocks", from_height)."""
    req = _unpack(data, MAX_REQUEST_BYTES, max_array=0, max_map=2, max_bin=0, max_str=16)
    if type(req) is not dict or not all(type(k) is str for k in req):
        raise SyncError("request must be a map with string keys")
    op = req.get("op")
    if op == "status" and req.keys() == {"op"}:
        return "status", 0
    if op == "blocks" and req.keys() == {"op", "from"}:
        start = req["from"]
        if not _is_height(start) or start < 1:
            raise SyncError("from must be a height >= 1")
        return "blocks", start
    raise SyncError("request must be {op: status} or {op: blocks, from: height}")


# A status answer is what a member says about itself: height (sync needs it) and, for the explorer's
# consortium page, its view, mempool size, connected peers and last block time. A member may lie in any of
# them; the decoder only bounds them so that no value can break a reader (a time past year 9999 would make
# datetime raise, a huge count would be shown as such). Members without the extra fields still decode.
MAX_STATUS_BYTES = 256
MAX_STATUS_FIELDS = 8
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the largest time datetime can show
_STATUS_LIMITS = {"view": 1 << 63, "mempool": 1 << 32, "peers": 1 << 16, "time": MAX_TIME_MS + 1}


@dataclass(frozen=True)
class PeerStatus:
    """A member's status as reported by that member (None: it did not say)."""

    height: int
    view: int | None = None
    mempool: int | None = None
    peers: int | None = None
    time: int | None = None  # ms since the epoch: the timestamp of its last block


def decode_status_report(reply: bytes) -> PeerStatus:
    """Status response -> PeerStatus; raises SyncError (only) on anything malformed or out of bounds."""
    value = _unpack(reply, MAX_STATUS_BYTES, max_array=0, max_map=MAX_STATUS_FIELDS, max_bin=64, max_str=16)
    if type(value) is not dict or not _is_height(value.get("height")):
        raise SyncError("status reply must be a map with a height")
    extra = {}
    for key, limit in _STATUS_LIMITS.items():
        x = value.get(key)
        if x is None:
            continue
        if type(x) is not int or not 0 <= x < limit:
            raise SyncError(f"status {key} must be an integer in [0, {limit})")
        extra[key] = x
    return PeerStatus(value["height"], **extra)


def decode_status(reply: bytes) -> int:
    """Status response -> the peer's height."""
    return decode_status_report(reply).height


def decode_blocks(reply: bytes, start: int) -> list[tuple[int, bytes, bytes]]:
    """Blocks response -> [(height, payload, certificate)], consecutive heights from ``start``, at most
    MAX_BLOCKS_PER_REQUEST; payloads and certificates are not parsed here."""
    value = _unpack(reply, 2 * MAX_RESPONSE_BYTES + (1 << 20), max_array=max(MAX_BLOCKS_PER_REQUEST, 3),
                    max_map=1, max_bin=2 * MAX_RESPONSE_BYTES, max_str=64)
    if type(value) is not dict or value.keys() - {"blocks", "error"}:
        raise SyncError("reply must be {blocks: [...]} or {error: text}")
    blocks = value.get("blocks")
    if blocks is None:
        return []  # {"error": ...}: the peer could not serve the request
    if type(blocks) is not list:
        raise SyncError("blocks must be an array")
    out = []
    for i, item in enumerate(blocks):
        if type(item) is not list or len(item) != 3:
            raise SyncError("each block must be [height, payload, certificate]")
        height, payload, cert = item
        if height != start + i or type(height) is not int:
            raise SyncError(f"block {i}: height {height!r:.20}, expected {start + i}")
        if type(payload) is not bytes or type(cert) is not bytes:
            raise SyncError(f"block {height}: payload and certificate must be byte strings")
        out.append((height, payload, cert))
    return out


class BlockSync:
    def __init__(self, net, chain: Chain, driver, peer_ids: list[str], scores: PeerScores | None = None):
        self.net = net
        self.chain = chain
        self.driver = driver
        self.peer_ids = peer_ids  # index = member index; our own entry is skipped
        self.syncing = False
        self.target = 0
        self._wake = trio.Event()
        self._requested: tuple[int, tuple[int, ...]] | None = None
        self.scores = scores if scores is not None else PeerScores()
        # Set by the node: this node's {"view", "mempool", "peers"} for status answers (None: height only).
        self.report: Callable[[], dict] | None = None
        self.stats = {"served": 0, "fetched": 0, "rounds": 0, "bad_responses": 0, "bad_requests": 0,
                      "bad_blocks": 0}

    def own_status(self) -> PeerStatus:
        """This node's status, as it answers a member's status request (the explorer's row for itself)."""
        store = self.chain.store
        header = store.get_header(store.height) if store.height else None
        extra = self.report() if self.report is not None else {}
        return PeerStatus(store.height, time=header.timestamp if header else None, **extra)

    # ------------------------------------------------------------------ serving
    async def serve(self, peer: str, data: bytes) -> bytes:
        try:
            op, start = decode_request(data)
        except SyncError as exc:
            self.stats["bad_requests"] += 1
            self.scores.penalize(peer, peerscore.MALFORMED, "malformed sync request", exc)
            return msgpack.packb({"error": f"malformed sync request: {exc}"})
        store = self.chain.store
        if op == "status":
            answer = {"height": store.height, "head": store.head or b""}
            header = store.get_header(store.height) if store.height else None
            if header is not None:
                answer["time"] = header.timestamp
            if self.report is not None:
                answer.update(self.report())
            return msgpack.packb(answer, use_bin_type=True)
        if op == "blocks":
            out, size = [], 0
            for height in range(start, min(store.height, start + MAX_BLOCKS_PER_REQUEST - 1) + 1):
                payload, cert = store.get_payload(height), store.get_certificate(height)
                if payload is None or cert is None:
                    break
                if out and size + len(payload) > MAX_RESPONSE_BYTES:
                    break
                out.append([height, payload, cert])
                size += len(payload) + len(cert)
            self.stats["served"] += len(out)
            return msgpack.packb({"blocks": out}, use_bin_type=True)
        raise AssertionError(f"decode_request returned op {op!r}")  # pragma: no cover

    # ------------------------------------------------------------------ catching up
    def request(self, target_height: int, peers: tuple[int, ...]) -> None:
        """Replica asked for state transfer (RequestStateTransfer)."""
        self._requested = (target_height, peers)
        self._wake.set()

    async def _status(self, index: int) -> int | None:
        report = await self.status_report(index)
        return None if report is None else report.height

    async def status_report(self, index: int) -> PeerStatus | None:
        """Member ``index``'s status as it reports it, or None (no answer, or a malformed one)."""
        try:
            reply = await self.net.request(self.peer_ids[index], CHANNEL, msgpack.packb({"op": "status"}),
                                           timeout=REQUEST_TIMEOUT)
        except Exception:  # unreachable, timed out: no answer (the network layer raises several types)
            return None
        try:
            return decode_status_report(reply)
        except SyncError as exc:
            self.stats["bad_responses"] += 1
            self.scores.penalize(self.peer_ids[index], peerscore.MALFORMED, "malformed sync status", exc)
            return None

    def _others(self) -> list[int]:
        """Members to sync from: not us, and not blocked for misbehaviour (unless all are)."""
        others = [i for i, pid in enumerate(self.peer_ids) if pid != self.net.peer_id]
        return [i for i in others if not self.scores.blocked(self.peer_ids[i])] or others

    async def run(self) -> None:
        last_height = self.chain.height
        # A node that has just started is likely behind (back from a crash or an upgrade): it asks its peers
        # at once, and again every STARTUP_RETRY until one has answered (connections are still being dialled)
        # or STARTUP_TRIES have passed, rather than idling a WATCH_INTERVAL first.
        interval, answered, tries = 0.0, False, 0
        while True:
            with trio.move_on_after(interval):
                await self._wake.wait()
            tries += 1
            interval = WATCH_INTERVAL if answered or tries >= STARTUP_TRIES else STARTUP_RETRY
            self._wake = trio.Event()
            requested, self._requested = self._requested, None
            others = self._others()
            if requested is not None:
                target, candidates = requested
                candidates = [i for i in candidates if i in others] or others
            else:
                # Safety net: our height stood still while a peer's moved on.
                if self.chain.height != last_height:
                    last_height = self.chain.height
                    continue
                heights = {}
                for i in random.sample(others, min(2, len(others))):
                    h = await self._status(i)
                    if h is not None:
                        heights[i] = h
                answered = answered or bool(heights)
                target = max(heights.values(), default=0)
                # Every peer ahead of us, highest first: a member that claims a height it cannot serve
                # must not be the only one asked (catch_up moves on to the next when one serves nothing).
                candidates = sorted((i for i, h in heights.items() if h > self.chain.height),
                                    key=lambda i: -heights[i])
            if target > self.chain.height and candidates:
                await self.catch_up(target, candidates, announce=True)
            last_height = self.chain.height

    async def catch_up(self, target: int, candidates: list[int], announce: bool) -> None:
        self.syncing, self.target = True, target
        progress = _Progress(self.chain.height, target)
        try:
            stalled = 0
            while self.chain.height < target and stalled < 3 * len(candidates):
                before = self.chain.height
                target = await self._pipeline(candidates[stalled % len(candidates)], target, announce, progress)
                if self.chain.height == before:
                    stalled += 1  # nothing (or nothing valid) from this peer: try the next
        finally:
            progress.close()
            self.syncing = False
            self.stats["rounds"] += 1

    async def _pipeline(self, index: int, target: int, announce: bool, progress: _Progress) -> int:
        """Catch up from member ``index`` until the target, its last block, or the first response that does
        not apply; returns the target (raised if the peer served blocks past it: it moved on meanwhile).

        Three stages run at once, so a batch costs the slowest of them rather than their sum: the peer reads
        and sends response k+2 (`_receive`) while response k+1's certificates and signatures are checked in
        worker threads (`_check`) and the driver executes response k. The
        channels between them hold one response each, which bounds memory to a few responses."""
        to_check_send, to_check = trio.open_memory_channel(1)
        to_apply_send, to_apply = trio.open_memory_channel(1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive, index, self.chain.height + 1, to_check_send)
            nursery.start_soon(self._check, index, to_check, to_apply_send)
            async for blocks in to_apply:
                if not blocks or blocks[0].height != self.chain.height + 1:
                    break  # a response failed its checks (the valid prefix, if any, came first) or left a gap
                before, done = self.chain.height, trio.Event()
                self.driver.synced(blocks, announce=announce, done=done)
                await done.wait()
                self.stats["fetched"] += len(blocks)
                progress.show(self.chain.height)
                target = max(target, blocks[-1].height)
                if self.chain.height != blocks[-1].height or self.chain.height >= target:
                    break  # a block did not apply (e.g. a guessed member set was wrong: fetched again), or done
                assert self.chain.height > before
            nursery.cancel_scope.cancel()
        return target

    async def _receive(self, index: int, start: int, out: trio.MemorySendChannel) -> None:
        """Ask member ``index`` for consecutive responses from ``start``; each decoded one goes to ``out``.
        Stops at the first empty, failed or malformed response (sending it on as an empty list)."""
        async with out:
            while True:
                blocks = await self._request(index, start)
                try:
                    await out.send(blocks)
                except trio.BrokenResourceError:
                    return  # the checker stopped at a refused block: what we fetched past it is of no use
                if not blocks:
                    return
                start = blocks[-1][0] + 1

    async def _check(self, index: int, inbox: trio.MemoryReceiveChannel, out: trio.MemorySendChannel) -> None:
        async with inbox, out:
            async for blocks in inbox:
                prepared = await self._prepare(index, blocks) if blocks else []
                await out.send(prepared)
                if len(prepared) < len(blocks) or not prepared:
                    return  # what follows a refused block cannot apply

    async def _fetch(self, index: int, start: int) -> list[SyncedPayload]:
        """One response of member ``index`` from height ``start``, completely checked: its valid prefix."""
        return await self._prepare(index, await self._request(index, start))

    async def _request(self, index: int, start: int) -> list[tuple[int, bytes, bytes]]:
        """One response of member ``index`` from height ``start``, decoded (not checked); [] if it failed."""
        peer = self.peer_ids[index]
        try:
            reply = await self.net.request(peer, CHANNEL, msgpack.packb({"op": "blocks", "from": start}),
                                           timeout=REQUEST_TIMEOUT)
        except Exception as exc:  # unreachable, timed out: the network layer raises several types
            self.stats["bad_responses"] += 1
            log.info("block sync from member %d failed: %s", index, exc)
            return []
        try:
            return decode_blocks(reply, start)
        except SyncError as exc:
            self.stats["bad_responses"] += 1
            self.scores.penalize(peer, peerscore.MALFORMED, "malformed sync response", exc)
            return []

    async def _prepare(self, index: int, blocks: list[tuple[int, bytes, bytes]]) -> list[SyncedPayload]:
        """Each block of a response completely checked (prepare_synced, one worker-thread call for the
        response) before the driver sees it: the valid prefix (a bad block and everything after it is
        dropped).

        Blocks past the heights whose member set the executed chain fixes (node.ledger.epochs) are checked
        against the member set known now: the driver applies such a block only if that set turns out to be
        the one of its height, so responses can be checked while the driver executes earlier ones.
        A certificate that fails under such a guessed set is not held against the peer."""
        if not blocks:
            return []
        peer = self.peer_ids[index]
        items, certain = [], []
        for height, payload, cert in blocks:
            epoch, max_txs, max_payload, known = self.chain.sync_context(height)
            items.append((height, payload, cert, epoch, max_txs, max_payload))
            certain.append(known)
        prepared, failure = await self._check_in_threads(items)
        if failure is not None:
            i, exc = failure
            if exc.peer_fault and certain[i]:
                self.stats["bad_blocks"] += 1
                self.scores.penalize(peer, peerscore.MALFORMED, "uncertified or altered block in sync response",
                                     exc)
            elif not exc.peer_fault:
                # A quorum certified a block no honest member validates: more than f members are faulty.
                # Every honest peer serves the same block; it is refused all the same (never stored).
                self.stats["bad_blocks"] += 1
                log.error("refusing a certified block from member %d: %s", index, exc)
        return prepared

    async def _check_in_threads(self, items: list) -> tuple[list[SyncedPayload], tuple | None]:
        """prepare_synced_batch over the response cut into up to CHECK_THREADS runs of consecutive blocks of
        about equal size, each in its own worker thread: the signature checks, most of the work, release the
        GIL, so a node catching up checks on every core. The same result as one call: the prepared prefix
        and the first refusal (index into ``items``). Txs gossip already verified (chain.verified) are taken
        as they are, not decoded or checked again."""
        parts = split_by_size(items, CHECK_THREADS)
        results: list = [None] * len(parts)

        async def check(j: int) -> None:
            results[j] = await trio.to_thread.run_sync(prepare_synced_batch, parts[j], self.chain.verified)

        async with trio.open_nursery() as nursery:
            for j in range(len(parts)):
                nursery.start_soon(check, j)
        prepared: list[SyncedPayload] = []
        offset = 0
        for part, (ok, failure) in zip(parts, results, strict=True):
            prepared.extend(ok)
            if failure is not None:
                return prepared, (offset + failure[0], failure[1])
            offset += len(part)
        return prepared, None


def split_by_size(items: list, parts: int) -> list[list]:
    """``items`` (height, payload, ...) cut into at most ``parts`` non-empty runs of consecutive blocks with
    about the same payload bytes each, in order."""
    total = sum(len(item[1]) for item in items)
    runs: list[list] = [[]]
    done = 0
    for item in items:
        # the next run starts with the block whose middle lies past this run's share (never an empty run)
        if runs[-1] and len(runs) < parts and done + len(item[1]) / 2 > total * len(runs) / parts:
            runs.append([])
        runs[-1].append(item)
        done += len(item[1])
    return runs


class _Progress:
    """A progress bar when stderr is a terminal (an operator watching a node catch up); nothing in a pipe
    or a log file, where the "catching up" log line says the same once."""

    def __init__(self, start: int, target: int):
        from tqdm import tqdm

        self.start, self.target = start, target
        log.info("catching up", extra={"fields": {"from": start, "to": target}})
        self.bar = tqdm(total=max(0, target - start), initial=0, desc="syncing blocks", unit="block",
                        file=sys.stderr, disable=not sys.stderr.isatty() or target - start <= 1,
                        dynamic_ncols=True)
        self.enabled = not self.bar.disable

    def show(self, height: int) -> None:
        if self.enabled:
            self.bar.update(max(0, min(height, self.target) - self.start - self.bar.n))

    def close(self) -> None:
        self.bar.close()
