"""The consensus write-ahead log: records the replica must see again after a crash.

Each record is framed as [u32 length][u32 crc32][bytes]. A kill -9 can tear the last record; on open the
torn tail is cut off, which is safe because the replica only acts on a record after it is written
(persist-before-send), so a torn record was never acted on.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import trio

_HEADER = struct.Struct(">II")
MAX_RECORD = 64 << 20


class WriteAheadLog:
    def __init__(self, directory: Path, fsync: bool = True):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "consensus.wal"
        self.fsync = fsync
        self.records: list[bytes] = self._read_and_repair()
        self._fh = open(self.path, "ab", buffering=0)
        self._pending: list[bytes] = []

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
        self._fh.write(b"".join(self._pending))
        self._pending.clear()
        if self.fsync:
            os.fsync(self._fh.fileno())

    async def flush_async(self) -> None:
        """flush() with the fsync in a worker thread, so the node's other tasks run while the disk works.
        The caller (the consensus driver, the only writer) still waits for durability before going on."""
        if not self._pending:
            return
        self._fh.write(b"".join(self._pending))
        self._pending.clear()
        if self.fsync:
            await trio.to_thread.run_sync(os.fsync, self._fh.fileno())

    def size(self) -> int:
        return self._fh.tell()

    def rewrite(self, records: list[bytes]) -> None:
        """Atomically replace the log with `records` (compaction after a stable checkpoint)."""
        self.flush()
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(b"".join(_HEADER.pack(len(r), zlib.crc32(r)) + r for r in records))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._fh.close()
        self._fh = open(self.path, "ab", buffering=0)

    def close(self) -> None:
        self.flush()
        self._fh.close()
