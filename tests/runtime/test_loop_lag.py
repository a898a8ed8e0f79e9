"""The event-loop lag watch (node/runtime/loop_lag.py) sees a loop that was blocked, and forgets it later."""

from __future__ import annotations

import time

import trio

from node.runtime.loop_lag import LoopLag


async def test_a_blocked_loop_shows_as_lag_and_a_free_one_does_not():
    lag = LoopLag(tick=0.02, window=10.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lag.run)
        await trio.sleep(0.2)
        assert lag.worst() < 0.15  # nothing blocked it (a generous bound: CI shares its CPUs)
        time.sleep(0.3)  # the loop is blocked: what a long step or a stalled host does
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert lag.worst() >= 0.25
    assert lag.worst_ever >= 0.25


def test_the_window_forgets_old_lag():
    lag = LoopLag(tick=0.1, window=10.0)
    lag.record(100.0, 0.8)
    lag.record(105.0, 0.01)
    assert lag.worst(now=106.0) == 0.8
    assert lag.worst(now=111.0) == 0.01  # the 0.8 s stall is more than 10 s old
    assert lag.worst(now=111.0, seconds=20) == 0.8
    lag.record(112.0, -0.001)  # a wake-up a hair early is no lag
    assert lag.worst(now=112.0, seconds=0.5) == 0.0
