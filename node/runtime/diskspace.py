"""A full disk is an operating condition, not a crash: refuse, pause, wait, resume.

Every write path that can meet ENOSPC (the chain store and the mempool in LevelDB, the consensus WAL)
reports it here. The first report of an episode logs ONE error line naming the path and the free space;
from then on the node refuses client txs (JSON-RPC -32004 with ``retry_after``), the consensus driver
waits instead of going on (it never sends a message whose WAL record did not reach the disk), and
`DiskGuard.run` polls the free space. When space returns it reopens the LevelDB handles (LevelDB keeps a
failed write's error, and may hold a half-written log record, until it is reopened and recovers), logs one
line, and the node carries on; block sync brings it up to the others' height.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import trio

from node.ledger.refusals import DiskFull, free_bytes, is_disk_full

log = logging.getLogger("radchain.disk")

MIN_FREE = 8 << 20         # free bytes needed before resuming: a LevelDB reopen compacts its log first
POLL = 0.5                 # seconds between free-space checks while full


class DiskGuard:
    """The node's disk-full state: tripped by any failing write, cleared by `run` once space returns."""

    def __init__(self, path: str | os.PathLike, *, min_free: int = MIN_FREE, poll: float = POLL):
        self.path = Path(path)
        self.min_free, self.poll = min_free, poll
        self.full = False
        self.episodes = 0
        self._tripped = trio.Event()
        self._resumed = trio.Event()
        self._reopen: list[Callable[[], None]] = []

    def on_resume(self, reopen: Callable[[], None]) -> None:
        """`reopen` runs (in the trio thread, between writes) when space returns, before anything resumes."""
        self._reopen.append(reopen)

    def trip(self, path: str | os.PathLike, exc: BaseException | None = None) -> DiskFull:
        """Record a failed write; returns the DiskFull to raise. Logs once per episode."""
        free = free_bytes(path)
        if not self.full:
            self.full = True
            self.episodes += 1
            self._resumed = trio.Event()
            self._tripped.set()
            log.error("disk full: cannot write %s (%d bytes free on its filesystem); refusing txs and pausing "
                      "consensus until %d bytes are free", os.fspath(path), free, self.min_free,
                      extra={"fields": {"path": os.fspath(path), "free_bytes": free, "error": str(exc)}})
        return exc if isinstance(exc, DiskFull) else DiskFull(path, free)

    def refusal(self) -> DiskFull:
        return DiskFull(self.path, free_bytes(self.path))

    async def wait_resumed(self) -> None:
        if self.full:
            await self._resumed.wait()

    async def run(self) -> None:
        while True:
            await self._tripped.wait()
            self._tripped = trio.Event()
            while True:
                while free_bytes(self.path) < self.min_free:
                    await trio.sleep(self.poll)
                try:
                    for reopen in self._reopen:
                        reopen()
                except Exception as exc:
                    if not is_disk_full(exc):
                        raise
                    await trio.sleep(self.poll)  # space went again while reopening: keep waiting
                    continue
                break
            self.full = False
            log.warning("disk space returned: %s has %d bytes free; resuming", self.path, free_bytes(self.path),
                        extra={"fields": {"path": str(self.path), "free_bytes": free_bytes(self.path)}})
            self._resumed.set()
