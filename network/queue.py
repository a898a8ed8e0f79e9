"""A bounded outbound frame queue per peer (bounded in frames and in bytes)."""

from __future__ import annotations

from collections import deque

import trio

__all__ = ["FrameQueue"]


class FrameQueue:
    """FIFO of encoded frames for one peer's writer task.

    `put_nowait` never blocks: it returns False (and stores nothing) when the queue is full.
    `await put()` waits for room instead. A queue is full at `max_frames` frames or when the frame
    would take it past `max_bytes`; an empty queue always accepts one frame, however large.
    """

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self._q: deque[bytes] = deque()
        self.nbytes = 0
        self._not_empty = trio.lowlevel.ParkingLot()
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
        self._not_empty.unpark_all()
        return True

    async def put(self, frame: bytes) -> None:
        while self._full_for(len(frame)):
            await self._not_full.park()
        self.put_nowait(frame)
        # A cancel point but no schedule point: a producer that never finds the queue full keeps
        # running, so the writer later drains many frames into one write (coalescing).
        await trio.lowlevel.checkpoint_if_cancelled()

    async def get_batch(self, max_bytes: int) -> list[bytes]:
        """Wait for at least one frame, yield once so producers can add more, then take frames up to
        `max_bytes` in total (always at least one)."""
        while not self._q:
            await self._not_empty.park()
        await trio.lowlevel.checkpoint()
        out: list[bytes] = []
        size = 0
        q = self._q
        while q and (not out or size + len(q[0]) <= max_bytes):
            f = q.popleft()
            out.append(f)
            size += len(f)
        self.nbytes -= size
        self._not_full.unpark_all()
        return out

    def clear(self) -> int:
        n = len(self._q)
        self._q.clear()
        self.nbytes = 0
        self._not_full.unpark_all()
        return n
