"""The consensus WAL (node/runtime/wal_file.py) on a real file: nothing flushed is lost, a torn tail left by
kill -9 is cut back to the last whole record on open, and the log goes on appending after the repair."""

from __future__ import annotations

import random
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.runtime.wal_file import MAX_RECORD, WriteAheadLog

records_st = st.lists(st.binary(min_size=0, max_size=64), min_size=1, max_size=12)


def _frame(record: bytes) -> bytes:
    return struct.pack(">II", len(record), zlib.crc32(record)) + record


def _write(directory, records) -> bytes:
    wal = WriteAheadLog(directory, fsync=False)
    for r in records:
        wal.append(r)
    wal.flush()
    wal.close()
    return (directory / "consensus.wal").read_bytes()


def test_flushed_records_survive_a_restart_and_unflushed_ones_are_not_on_disk(tmp_path):
    wal = WriteAheadLog(tmp_path)
    wal.append(b"prepare h=1")
    wal.append(b"commit h=1")
    assert wal.dirty and (tmp_path / "consensus.wal").read_bytes() == b""  # queued: not yet durable
    wal.flush()
    assert not wal.dirty
    wal.append(b"never flushed")
    # kill -9 here: the queued record was never written (nothing acted on it: persist before send)
    assert WriteAheadLog(tmp_path).records == [b"prepare h=1", b"commit h=1"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=records_st, data=st.data())
def test_a_tail_torn_at_any_byte_is_cut_back_to_the_last_whole_record(tmp_path_factory, records, data):
    directory = tmp_path_factory.mktemp("wal")
    full = _write(directory, records)
    cut = data.draw(st.integers(0, len(full)), label="cut")
    (directory / "consensus.wal").write_bytes(full[:cut])  # kill -9 in the middle of a write
    # the records wholly inside the first `cut` bytes, and only those
    whole, offset = [], 0
    for r in records:
        if offset + 8 + len(r) > cut:
            break
        whole.append(r)
        offset += 8 + len(r)
    wal = WriteAheadLog(directory, fsync=False)
    assert wal.records == whole
    assert (directory / "consensus.wal").stat().st_size == offset  # the torn bytes are gone from the file
    # the node restarts and goes on logging: the new record follows the last whole one, readable after
    wal.append(b"after restart")
    wal.flush()
    wal.close()
    assert WriteAheadLog(directory, fsync=False).records == whole + [b"after restart"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=records_st, data=st.data())
def test_a_corrupted_byte_ends_the_log_at_the_record_before_it(tmp_path_factory, records, data):
    """A flipped byte (a sector written half) fails the CRC: that record and everything after it were never
    acknowledged whole, so the log ends before it rather than replaying garbage."""
    directory = tmp_path_factory.mktemp("wal")
    full = bytearray(_write(directory, records))
    pos = data.draw(st.integers(0, len(full) - 1), label="pos")
    full[pos] ^= data.draw(st.integers(1, 255), label="xor")
    (directory / "consensus.wal").write_bytes(bytes(full))
    offset, index = 0, 0
    while offset + 8 + len(records[index]) <= pos:
        offset += 8 + len(records[index])
        index += 1
    got = WriteAheadLog(directory, fsync=False).records
    assert got[:index] == records[:index]
    # the damaged record is never returned altered; only a flip inside its length field that happens to
    # frame a valid (crc-matching) shorter body could keep going, which a 32-bit CRC makes negligible
    assert len(got) == index


def test_a_forged_huge_length_is_refused_before_allocation(tmp_path):
    """An attacker (or a bit flip) writes a length of 4 GiB: the reader stops there and keeps the prefix."""
    good = _frame(b"ok")
    (tmp_path / "consensus.wal").write_bytes(good + struct.pack(">II", MAX_RECORD + 1, 0) + b"x" * 100)
    wal = WriteAheadLog(tmp_path, fsync=False)
    assert wal.records == [b"ok"]
    assert (tmp_path / "consensus.wal").read_bytes() == good


def test_rewrite_replaces_the_log_atomically_and_appends_continue(tmp_path):
    wal = WriteAheadLog(tmp_path, fsync=False)
    for r in (b"a", b"b", b"c"):
        wal.append(r)
    wal.flush()
    wal.rewrite([b"c"])  # compaction after a stable checkpoint
    assert not (tmp_path / "consensus.tmp").exists()
    wal.append(b"d")
    wal.flush()
    assert wal.size() == len(_frame(b"c") + _frame(b"d"))
    wal.close()
    assert WriteAheadLog(tmp_path, fsync=False).records == [b"c", b"d"]


def test_close_flushes_what_is_queued(tmp_path):
    wal = WriteAheadLog(tmp_path, fsync=False)
    wal.append(b"x")
    wal.close()
    assert WriteAheadLog(tmp_path, fsync=False).records == [b"x"]


WRITER = """
import sys
from pathlib import Path
from node.runtime.wal_file import WriteAheadLog
wal = WriteAheadLog(Path(sys.argv[1]), fsync=False)
i = len(wal.records)
print("start", i, flush=True)
while True:
    wal.append(bytes([i % 251]) * ((1 + i % 4) << 20))  # 1..4 MiB: a kill can land inside the write
    wal.flush()
    print("flushed", i, flush=True)  # acknowledged: a restart must find it
    i += 1
"""


def _expected(i: int) -> bytes:
    return bytes([i % 251]) * ((1 + i % 4) << 20)


def test_kill_9_while_writing_loses_nothing_flushed_and_the_log_restarts(tmp_path):
    """A real process appends multi-MiB records and is killed -9 at an arbitrary moment, three times over:
    every restart finds every acknowledged record whole and in order, nothing torn, and goes on appending."""
    repo = Path(__file__).resolve().parents[2]
    acknowledged = -1
    for _round in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE,
                                text=True, cwd=repo)
        try:
            start = int(proc.stdout.readline().split()[1])
            assert start == acknowledged + 1  # it resumes right after the last whole record
            target = start + random.randint(1, 3)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                assert line, "writer exited"
                acknowledged = max(acknowledged, int(line.split()[1]))
                if acknowledged >= target:
                    break
            time.sleep(random.random() * 0.01)  # somewhere inside the next write
        finally:
            proc.kill()
            proc.wait()
        records = WriteAheadLog(tmp_path, fsync=False).records
        assert len(records) >= acknowledged + 1  # nothing acknowledged is lost
        assert all(r == _expected(i) for i, r in enumerate(records))  # whole, in order, nothing torn
        size = (tmp_path / "consensus.wal").stat().st_size
        assert size == sum(8 + len(r) for r in records)  # any torn tail was cut off
        acknowledged = len(records) - 1
