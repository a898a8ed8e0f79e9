"""Where a tx waits between its client and its commit (issue 17), on when RADCHAIN_TRACE_LATENCY=1.

Off by default and free then. On, every node logs one line every INTERVAL seconds with p50/p99 (ms) of:

- ``e2e``: commit on this node minus the tx's ``ts`` (the event time its client set when it built the call:
  same machine, same wall clock in the bench), for every tx of every committed block;
- ``to_here``: ``ts`` -> admitted into this node's mempool (HTTP, signing and admission on the node that took
  it; plus gossip, the gossip loop's wait and the signature check on the others);
- ``here``: admitted here -> committed here;
- on the primary: ``wait_propose`` (admitted -> proposed) and ``consensus`` (proposed -> executed here);
- ``loop_lag``: how late a 5 ms sleep on the event loop wakes (what blocks the loop: long steps);
- ``long_steps``: the driver's steps over 50 ms in the interval (count and max).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time

import trio

from node.ledger.tx import decode_tx

log = logging.getLogger("radchain.latency")

ENABLED = os.environ.get("RADCHAIN_TRACE_LATENCY") == "1"
INTERVAL = 5.0
LAG_TICK = 0.005


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs.sort()
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1)))]


class LatencyTrace:
    def __init__(self, node):
        self.node = node
        self.samples: dict[str, list[float]] = {}
        self.proposed: dict[int, float] = {}

    def step(self, event, seconds: float) -> None:
        """A driver step took `seconds` (the event it handled, or what it became)."""
        if seconds > 0.01:
            kind = type(event).__name__
            if kind == "MessageReceived" and len(event.data) > 1:
                kind = f"msg{event.data[1]}"
            self.add(f"step_{kind}", seconds * 1000)

    def committed(self, height: int) -> None:
        """The replica committed `height` (the driver is about to execute it)."""
        t = self.proposed.get(height)
        if t is not None:
            self.add("agree", (time.monotonic() - t) * 1000)

    def add(self, stage: str, ms: float) -> None:
        self.samples.setdefault(stage, []).append(ms)

    def on_propose(self, height: int, raws: list[bytes]) -> None:
        now = time.monotonic()
        self.proposed[height] = now
        arrival = self.node.mempool._arrival
        for raw in raws:
            t = arrival.get(hashlib.sha256(raw).digest())
            if t is not None:
                self.add("wait_propose", (now - t) * 1000)

    def on_commit(self, block) -> None:
        """Before the mempool forgets the block's txs."""
        now, wall = time.monotonic(), time.time() * 1000
        node = self.node
        t = self.proposed.pop(block.height, None)
        if t is not None:
            self.add("consensus", (now - t) * 1000)
        for h in list(self.proposed):
            if h < block.height:
                del self.proposed[h]
        arrival = node.mempool._arrival
        for h in block.tx_hashes:
            tx = node.chain.verified(h)
            if tx is None:
                raw = node.mempool.get(h)
                if raw is None:
                    continue
                tx = decode_tx(raw, hash=h, verify=False)
            e2e = wall - tx.fields.get("ts", wall)
            self.add("e2e", e2e)
            a = arrival.get(h)
            if a is not None:
                here = (now - a) * 1000
                self.add("here", here)
                self.add("to_here", e2e - here)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._lag_loop)
            while True:
                await trio.sleep(INTERVAL)
                self._report()

    async def _lag_loop(self) -> None:
        while True:
            t = time.perf_counter()
            await trio.sleep(LAG_TICK)
            self.add("loop_lag", (time.perf_counter() - t - LAG_TICK) * 1000)

    def _report(self) -> None:
        s, self.samples = self.samples, {}
        if not any(k != "loop_lag" for k in s):
            return
        steps = list(self.node.driver._exec_times)
        parts = [f"{k} p50 {_pct(v, 0.5):.0f} p99 {_pct(v, 0.99):.0f} n {len(v)}" for k, v in sorted(s.items())]
        log.info("latency trace %s primary=%s: %s; long steps recent max %.0f ms", self.node.cfg.name,
                 self.node.replica.is_primary, "; ".join(parts), max(steps, default=0) * 1000)
