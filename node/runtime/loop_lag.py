"""How late the node's event loop wakes: a sleep of TICK seconds, measured against the clock, always on.

A node whose loop is blocked (a long step, a GC pause, the host taking its CPU away) reads nothing from its
peers meanwhile, and a timer that fires when the loop comes back cannot tell that from silent peers. The view
change log line (node/runtime/driver.py) and `/metrics` report the worst lag of the last WINDOW seconds, so
an operator can tell "my node was stalled" from "my peers were silent". Ten wake-ups a second cost nothing
measurable.
"""

from __future__ import annotations

import time
from collections import deque

import trio

TICK = 0.1
WINDOW = 10.0


class LoopLag:
    def __init__(self, tick: float = TICK, window: float = WINDOW):
        self.tick = tick
        self._samples: deque[tuple[float, float]] = deque(maxlen=max(1, int(window / tick)))  # (at, lag s)
        self.worst_ever = 0.0

    def record(self, at: float, lag: float) -> None:
        lag = max(0.0, lag)
        self._samples.append((at, lag))
        self.worst_ever = max(self.worst_ever, lag)

    def worst(self, now: float | None = None, seconds: float = WINDOW) -> float:
        """The longest lag (s) among the wake-ups of the last `seconds` (by time.monotonic())."""
        now = time.monotonic() if now is None else now
        return max((lag for at, lag in self._samples if now - at <= seconds), default=0.0)

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            await trio.sleep(self.tick)
            now = time.monotonic()
            self.record(now, now - started - self.tick)
