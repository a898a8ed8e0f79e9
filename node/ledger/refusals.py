"""Refusals that mean "retry later": a full disk and a full mempool.

Ledger-side so the chain store can tell a full disk from a broken store, and so the RPC edge can answer
either without importing the runtime; node.runtime.diskspace (the pause-and-resume guard) and
node.runtime.mempool raise them.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import plyvel

RETRY_AFTER = 5.0          # seconds a refused client is told to wait
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(Exception):
    """A write failed because the filesystem is full; nothing of it was kept. Retry after space returns."""

    def __init__(self, path: str | os.PathLike, free: int, retry_after: float = RETRY_AFTER):
        self.path, self.free, self.retry_after = os.fspath(path), free, retry_after
        super().__init__(f"disk full: this node cannot write {self.path} ({free} bytes free); "
                         f"retry in {retry_after:g} s (resubmitting is safe)")

    @property
    def data(self) -> dict:
        return {"reason": "disk_full", "retry_after": self.retry_after}


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT from the OS, or LevelDB's status text for it (plyvel's IOError carries no errno)."""
    if isinstance(exc, DiskFull):
        return True
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        return True
    if isinstance(exc, plyvel.Error):
        text = str(exc).lower()
        return "no space left" in text or "quota exceeded" in text
    return False


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding `path` (or its nearest parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


class MempoolFull(Exception):
    """The mempool holds its configured maximum; the submitter should retry later."""
