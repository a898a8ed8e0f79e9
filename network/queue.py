"""Bounded outbound frame queues for one peer's writer task (bounded in frames and in bytes)."""

from __future__ import annotations

from collections import deque

import trio

__all__ = ["FrameQueue"]


class FrameQueue:
    """FIFO of encoded frames.

    `put_nowait` never blocks: it returns False (and stores nothing) when the queue is full.
    `await put()` waits for room instead. A queue is full at `max_frames` frames or when the frame
    would take it past `max_bytes`; an empty queue always accepts one frame, however large.
    Several queues can share one `wakeup` parking lot so a single writer can wait on all of them.
    """

    def __init__(self, max_frames: int, max_bytes: int, wakeup: trio.lowlevel.ParkingLot | None = None) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self._q: deque[bytes] = deque()
        self.nbytes = 0
        self.wakeup = wakeup if wakeup is not None else trio.lowlevel.ParkingLot()
        self._not_full = trio.lowlevel.ParkingLot()

    def __len__(self) -> int:
        return len(self._q)

    def _full_for(self, n: int) -> bool:
        return bool(self._q) and (len(self._q) >= self.max_frames or self.nbytes + n > self.max_bytes)

    def put_nowait(self, frame: bytes) -> bool:
        if self._full_for(len(frame)):
            return False
        self._q.append(frame)
        self.nbytes += len(frame)
        if self.wakeup:  # only when the writer is parked: unpark_all costs ~5 us per message
            self.wakeup.unpark_all()
        return True

    async def put(self, frame: bytes) -> None:
        while self._full_for(len(frame)):
            await self._not_full.park()
        self.put_nowait(frame)
        # A cancel point but no schedule point: a producer that never finds the queue full keeps
        # running, so the writer later drains many frames into one write (coalescing).
        await trio.lowlevel.checkpoint_if_cancelled()

    def clear(self) -> int:
        """Drop every frame (their peer is gone for good or for long); returns how many were dropped."""
        n = len(self._q)
        self._q.clear()
        self.nbytes = 0
        if self._not_full:
            self._not_full.unpark_all()
        return n

    def take(self, max_bytes: int, at_least_one: bool = True) -> list[bytes]:
        """Pop frames totalling at most `max_bytes` (plus one oversized frame if `at_least_one`)."""
        out: list[bytes] = []
        size = 0
        q = self._q
        while q and (size + len(q[0]) <= max_bytes or (at_least_one and not out)):
            f = q.popleft()
            out.append(f)
            size += len(f)
        if out:
            self.nbytes -= size
            if self._not_full:
                self._not_full.unpark_all()
        return out
