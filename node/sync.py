"""Block sync: serve committed blocks with their certificates, and catch up from peers.

A node catches up when it starts behind (empty, or back from a crash), when the replica asks for state
transfer, and — as a safety net, so no node ever stays stuck — whenever a peer reports a higher height while
this node's height has not moved. Fetched blocks are executed by the consensus driver (the store's single
writer), which checks every certificate against the member keys before applying a block.
"""

from __future__ import annotations

import logging
import random
import sys

import msgpack
import trio

from node.chain import Chain

log = logging.getLogger("radchain.sync")

CHANNEL = "sync"
MAX_RESPONSE_BYTES = 3 << 20
MAX_BLOCKS_PER_REQUEST = 64
WATCH_INTERVAL = 2.0
REQUEST_TIMEOUT = 10.0


class BlockSync:
    def __init__(self, net, chain: Chain, driver, peer_ids: list[str]):
        self.net = net
        self.chain = chain
        self.driver = driver
        self.peer_ids = peer_ids  # index = member index; our own entry is skipped
        self.syncing = False
        self.target = 0
        self._wake = trio.Event()
        self._requested: tuple[int, tuple[int, ...]] | None = None
        self.stats = {"served": 0, "fetched": 0, "rounds": 0, "bad_responses": 0}

    # ------------------------------------------------------------------ serving
    async def serve(self, peer: str, data: bytes) -> bytes:
        try:
            req = msgpack.unpackb(data, raw=False, max_map_len=4, max_str_len=16)
            op = req["op"]
        except Exception:
            return msgpack.packb({"error": "malformed sync request"})
        store = self.chain.store
        if op == "status":
            return msgpack.packb({"height": store.height, "head": store.head or b""}, use_bin_type=True)
        if op == "blocks":
            start = req.get("from")
            if not isinstance(start, int) or start < 1:
                return msgpack.packb({"error": "from must be a height >= 1"})
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
        return msgpack.packb({"error": f"unknown op {op!r}"})

    # ------------------------------------------------------------------ catching up
    def request(self, target_height: int, peers: tuple[int, ...]) -> None:
        """Replica asked for state transfer (RequestStateTransfer)."""
        self._requested = (target_height, peers)
        self._wake.set()

    async def _status(self, index: int) -> int | None:
        try:
            reply = await self.net.request(self.peer_ids[index], CHANNEL, msgpack.packb({"op": "status"}),
                                           timeout=REQUEST_TIMEOUT)
            height = msgpack.unpackb(reply, raw=False).get("height")
            return height if isinstance(height, int) else None
        except Exception:
            return None

    def _others(self) -> list[int]:
        return [i for i, pid in enumerate(self.peer_ids) if pid != self.net.peer_id]

    async def run(self) -> None:
        last_height = self.chain.height
        while True:
            with trio.move_on_after(WATCH_INTERVAL):
                await self._wake.wait()
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
                target = max(heights.values(), default=0)
                candidates = [i for i, h in heights.items() if h == target]
            if target > self.chain.height and candidates:
                await self.catch_up(target, candidates, announce=True)
            last_height = self.chain.height

    async def catch_up(self, target: int, candidates: list[int], announce: bool) -> None:
        self.syncing, self.target = True, target
        start = self.chain.height
        progress = _Progress(start, target)
        try:
            stalled = 0
            while self.chain.height < target and stalled < 3 * len(candidates):
                peer = candidates[stalled % len(candidates)]
                blocks = await self._fetch(peer, self.chain.height + 1)
                if not blocks:
                    stalled += 1
                    continue
                done = trio.Event()
                before = self.chain.height
                self.driver.synced(blocks, announce=announce, done=done)
                await done.wait()
                self.stats["fetched"] += len(blocks)
                if self.chain.height == before:
                    stalled += 1  # the peer's blocks did not verify; try another
                progress.show(self.chain.height)
                # A peer may have moved on while we fetched.
                target = max(target, blocks[-1][0])
        finally:
            progress.close()
            self.syncing = False
            self.stats["rounds"] += 1

    async def _fetch(self, index: int, start: int) -> list[tuple[int, bytes, bytes]]:
        try:
            reply = await self.net.request(self.peer_ids[index], CHANNEL,
                                           msgpack.packb({"op": "blocks", "from": start}), timeout=REQUEST_TIMEOUT)
            blocks = msgpack.unpackb(reply, raw=False, max_bin_len=MAX_RESPONSE_BYTES * 2).get("blocks") or []
            out = []
            for item in blocks:
                height, payload, cert = item
                if not (isinstance(height, int) and isinstance(payload, bytes) and isinstance(cert, bytes)):
                    raise ValueError("malformed block entry")
                out.append((height, payload, cert))
            return out
        except Exception as exc:
            self.stats["bad_responses"] += 1
            log.info("block sync from member %d failed: %s", index, exc)
            return []


class _Progress:
    """A one-line progress bar when stderr is a terminal (an operator watching a node catch up)."""

    def __init__(self, start: int, target: int):
        self.start, self.target = start, target
        self.enabled = sys.stderr.isatty() and target - start > 1
        log.info("catching up", extra={"fields": {"from": start, "to": target}})

    def show(self, height: int) -> None:
        if not self.enabled:
            return
        total = max(1, self.target - self.start)
        done = min(total, height - self.start)
        bar = "#" * (30 * done // total)
        sys.stderr.write(f"\rsyncing blocks {height}/{self.target} [{bar:<30}]")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
