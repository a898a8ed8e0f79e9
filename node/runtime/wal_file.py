"""The consensus write-ahead log: records the replica must see again after a crash.

Each record is framed as [u32 length][u32 crc32][bytes]. A kill -9 can tear the last record; on open the
torn tail is cut off, which is safe because the replica only acts on a record after it is written
(persist-before-send), so a torn record was never acted on.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from pathlib import Path

import trio

from node.rpc.metrics import Histogram
from node.runtime.diskspace import DiskFull, free_bytes, is_disk_full

_HEADER = struct.Struct(">II")
MAX_RECORD = 64 << 20
FSYNC_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0)  # seconds


class WriteAheadLog:
    def __init__(self, directory: Path, fsync: bool = True):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "consensus.wal"
        self.fsync = fsync
        self.records: list[bytes] = self._read_and_repair()
        self._fh = open(self.path, "ab", buffering=0)
        self._pending: list[bytes] = []
        self.flushes = 0  # writes made durable (one per driver group: /metrics radchain_wal_flushes_total)
        # How long each fsync took (/metrics radchain_wal_fsync_seconds, as etcd's wal_fsync_duration_seconds):
        # a vote waits for it, so a disk that stalls for seconds shows here before it shows as a view change.
        self.fsync_seconds = Histogram(FSYNC_BUCKETS)

    def _read_and_repair(self) -> list[bytes]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        records, offset = [], 0
        while offset + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, offset)
            body = data[offset + _HEADER.size: offset + _HEADER.size + length]
            if length > MAX_RECORD or len(body) != length or zlib.crc32(body) != crc:
                break
            records.append(bytes(body))
            offset += _HEADER.size + length
        if offset != len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(offset)
                os.fsync(fh.fileno())
        return records

    def append(self, record: bytes) -> None:
        """Queue a record; it is durable only after flush()."""
        self._pending.append(_HEADER.pack(len(record), zlib.crc32(record)) + record)

    @property
    def dirty(self) -> bool:
        return bool(self._pending)

    def flush(self) -> None:
        if not self._pending:
            return
        start = self._write_pending()
        if self.fsync:
            self._fsync(start)
        self._pending.clear()
        self.flushes += 1

    async def flush_async(self) -> None:
        """flush() with the fsync in a worker thread, so the node's other tasks run while the disk works.
        The caller (the consensus driver, the only writer) still waits for durability before going on."""
        if not self._pending:
            return
        start = self._write_pending()
        if self.fsync:
            await trio.to_thread.run_sync(self._fsync, start)
        self._pending.clear()
        self.flushes += 1

    def _write_pending(self) -> int:
        """Write the queued records whole, or not at all: on a full disk (a raw write may also come back
        short) the file is cut back to where it was and the records stay queued, so a later flush writes
        them again and the log never holds a torn record in its middle. Returns the offset they start at;
        the caller clears the queue once they are durable. Raises DiskFull."""
        data = b"".join(self._pending)
        start = self._fh.tell()
        view, done = memoryview(data), 0
        try:
            while done < len(data):
                n = self._fh.write(view[done:])
                if not n:
                    raise OSError(28, "No space left on device (short write)")
                done += n
        except OSError as exc:
            self._cut_back(start)
            if is_disk_full(exc):
                raise DiskFull(self.path, free_bytes(self.path)) from exc
            raise
        return start

    def _cut_back(self, offset: int) -> None:
        self._fh.truncate(offset)
        self._fh.seek(offset)

    def _fsync(self, start: int) -> None:
        began = time.monotonic()
        try:
            os.fsync(self._fh.fileno())
            self.fsync_seconds.observe(time.monotonic() - began)  # one flush at a time: the driver waits
        except OSError as exc:
            # The records were written, yet are not durable: never acknowledge them. Linux may already have
            # dropped the failed dirty pages, so they are written again by the next flush (cut back first).
            self._cut_back(start)
            if is_disk_full(exc):
                raise DiskFull(self.path, free_bytes(self.path)) from exc
            raise

    def size(self) -> int:
        return self._fh.tell()

    def rewrite(self, records: list[bytes]) -> None:
        """Atomically replace the log with `records` (compaction after a stable checkpoint)."""
        self.flush()
        tmp = self.path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(b"".join(_HEADER.pack(len(r), zlib.crc32(r)) + r for r in records))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)  # the old log, a superset of `records`, stays in place
            if is_disk_full(exc):
                raise DiskFull(self.path, free_bytes(self.path)) from exc
            raise
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._fh.close()
        self._fh = open(self.path, "ab", buffering=0)

    def close(self) -> None:
        try:
            self.flush()
        except DiskFull:
            pass  # records still queued were never acted on (persist-before-send): losing them is safe
        finally:
            self._fh.close()
