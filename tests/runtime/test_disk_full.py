"""A full disk pauses a node; it does not kill it (node/runtime/diskspace.py).

The WAL test fills a real tiny tmpfs under a real WriteAheadLog. The node test runs four real node processes,
member 3's data directory (chain store, mempool, WAL) on a 16 MiB tmpfs that the test fills: member 3 logs ONE
clear line naming the path and the free space, refuses txs with -32004 and a retry_after, stays up, and the
other three keep committing; when the space comes back it resumes by itself, catches up and holds the same
blocks as the others. Needs root (mount); skipped, saying why, where mounting is impossible.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from consensus import actions as A
from consensus import events as E
from node.ledger.chain import Chain
from node.ledger.intake import EXAMPLE_EVENT
from node.ledger.store import Store
from node.runtime.diskspace import DiskFull, DiskGuard
from node.runtime.driver import ConsensusDriver
from node.runtime.mempool import Mempool, MempoolFull
from node.runtime.wal_file import WriteAheadLog
from node.testnet import rpc_call

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "testkit"))
from ledger_helpers import T0, Consortium  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def _mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs of `size` on `path`; the reason it cannot be done here, or None."""
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs"
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    return f"cannot mount a tmpfs here: {r.stderr.strip()}" if r.returncode else None


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(directory: Path) -> Path:
    """Write until the filesystem is full; unlinking the file gives the space back."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * (64 << 10)
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
        try:  # the last few bytes, so that not even a log record fits
            while f.write(b"\0" * 512):
                pass
        except OSError:
            pass
    return filler


@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def mount(path: Path, size: str) -> Path:
        reason = _mount_tmpfs(path, size)
        if reason:
            pytest.skip(reason)
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        _umount(path)


def test_wal_on_a_full_disk_keeps_no_torn_record_and_flushes_once_space_returns(tmp_path, tmpfs):
    directory = tmpfs(tmp_path / "wal", "1m")
    wal = WriteAheadLog(directory)
    wal.append(b"before")
    wal.flush()
    size = wal.size()
    filler = _fill(directory)
    wal.append(b"x" * 200_000)  # cannot fit
    with pytest.raises(DiskFull) as refused:
        wal.flush()
    assert str(directory / "consensus.wal") in str(refused.value)
    assert (directory / "consensus.wal").stat().st_size == size, "a failed flush left part of a record"
    assert wal.dirty, "the record must stay queued, to be written once space returns"
    filler.unlink()
    wal.append(b"after")
    wal.flush()
    wal.close()
    assert WriteAheadLog(directory).records == [b"before", b"x" * 200_000, b"after"]


def test_mempool_on_a_full_disk_refuses_with_retry_and_admits_after_reopen(tmp_path, tmpfs):
    directory = tmpfs(tmp_path / "data", "2m")
    guard = DiskGuard(directory, min_free=256 << 10)
    pool = Mempool(directory / "mempool", 1000)
    pool.guard = guard
    pool.add_many([(b"a" * 32, b"tx-a")], 0.0)
    filler = _fill(directory)
    with pytest.raises(MempoolFull) as refused:  # what the RPC and gossip already handle: never a traceback
        for k in range(200):  # LevelDB's log may still have room in its last page for a few small records
            pool.add_many([(k.to_bytes(32, "big"), b"x" * 4096)], 0.0)
    assert isinstance(refused.value, DiskFull) and refused.value.retry_after > 0
    assert guard.full
    held = len(pool)
    with pytest.raises(DiskFull):  # while full, refused at once, without touching LevelDB
        pool.add_many([(b"b" * 32, b"tx-b")], 0.0)
    assert len(pool) == held, "a refused tx must not be held"
    filler.unlink()
    pool.reopen()
    guard.full = False  # what DiskGuard.run does after the reopen
    pool.add_many([(b"c" * 32, b"tx-c")], 0.0)
    pool.close()
    again = Mempool(directory / "mempool", 1000)
    assert again.restore(lambda h: False, 0.0) == held + 1
    assert again.get(b"c" * 32) == b"tx-c" and again.get(b"b" * 32) is None
    again.close()


def test_log_lines_on_a_full_disk_are_counted_not_raised(capsys):
    """node.log may sit on the full disk too (/dev/full: every write fails with ENOSPC)."""
    import contextlib
    import io
    import logging

    from node.runtime.jsonlogs import JsonFormatter, _StderrHandler

    full = open("/dev/full", "w")  # noqa: SIM115 (closing it flushes what could not be written: fails too)
    handler = _StderrHandler(full)
    handler.setFormatter(JsonFormatter())
    record = logging.LogRecord("radchain.test", logging.ERROR, __file__, 1, "disk full: x", None, None)
    handler.emit(record)
    handler.emit(record)
    assert handler.lost == 2
    assert "Logging error" not in capsys.readouterr().err
    handler.stream = io.StringIO()  # space is back (setStream would flush /dev/full first)
    with contextlib.suppress(OSError):
        full.close()
    handler.emit(record)
    lines = [json.loads(line) for line in handler.stream.getvalue().splitlines()]
    assert lines[0]["msg"] == "2 log lines lost: their disk was full" and lines[1]["msg"] == "disk full: x"


def _driver(wal: WriteAheadLog, guard: DiskGuard, chain=None, sent: list | None = None) -> ConsensusDriver:
    sent = [] if sent is None else sent
    return ConsensusDriver(None, chain, wal, send=lambda i, d: sent.append(d), broadcast=sent.append,
                           build_proposal=lambda h, must: None, mempool_count=lambda: 0,
                           on_commit=lambda b, p: None, on_state_transfer=lambda h, peers: None,
                           on_evidence=lambda e: None, disk=guard)


async def _paused(driver: ConsensusDriver) -> None:
    with trio.fail_after(5):
        while not driver.paused:
            await trio.sleep(0.01)


async def test_driver_sends_no_vote_before_its_wal_record_is_on_disk(tmp_path, tmpfs):
    """Persist before acknowledge on a full disk: the vote goes out only once its record is durable."""
    directory = tmpfs(tmp_path / "data", "2m")
    guard = DiskGuard(directory, min_free=1 << 20, poll=0.02)
    sent: list[bytes] = []
    driver = _driver(WriteAheadLog(directory / "wal"), guard, sent=sent)
    filler = _fill(directory)
    record = b"r" * 100_000
    done = trio.Event()

    async def perform():
        await driver._perform([A.Persist(record), A.Broadcast(b"vote")])
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(guard.run)
        nursery.start_soon(perform)
        await _paused(driver)
        await trio.sleep(0.2)
        assert sent == [] and guard.full and not done.is_set(), "a vote went out before its WAL record was durable"
        driver.message(0, b"a frame")  # dropped while paused, as a partition would
        assert driver.stats["dropped_paused"] == 1
        filler.unlink()
        with trio.fail_after(5):
            await done.wait()
        assert sent == [b"vote"] and not guard.full and not driver.paused
        nursery.cancel_scope.cancel()
    driver.wal.close()
    assert WriteAheadLog(directory / "wal").records == [record]


async def test_driver_executes_a_committed_block_the_full_store_refused_once_space_returns(tmp_path, tmpfs):
    directory = tmpfs(tmp_path / "data", "8m")
    c = Consortium()
    chain = Chain(c.genesis, Store(directory / "chain"))
    guard = DiskGuard(directory, min_free=1 << 20, poll=0.02)
    guard.on_resume(chain.store.reopen)
    wal = WriteAheadLog(tmp_path / "wal")  # elsewhere: only the store is full here
    driver = _driver(wal, guard, chain=chain)
    payload = chain.build_proposal(1, 0, T0, [c.tx(0) for _ in range(40)])  # more than a page: cannot fit
    chain.validate_proposal(1, payload, now_ms=T0)
    commit = A.Commit(1, payload, chain.proposal_digest(payload), c.certificate(chain, payload, 1))
    filler = _fill(directory)
    done = trio.Event()

    async def perform():
        await driver._perform([commit])
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(guard.run)
        nursery.start_soon(perform)
        await _paused(driver)
        assert chain.height == 0 and guard.full
        filler.unlink()
        with trio.fail_after(5):
            await done.wait()
        replay = driver._queue.popleft()  # the refused commit, executed again in order
        assert driver._perform_one(replay.commit) == E.Executed(1, chain.store.get_block(1).hash)
        nursery.cancel_scope.cancel()
    assert chain.height == 1
    chain.store.close()
    wal.close()
    assert Store(directory / "chain").height == 1


def _submit(info, k: str) -> dict:
    event = {**EXAMPLE_EVENT, "event_id": f"disk-{k}", "time": int(time.time() * 1000)}
    return rpc_call(info.rpc, "submit_event", {"event": event}, info.token, timeout=5)


def _disk_full_lines(log: Path) -> list[dict]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") == "error" and "disk full" in str(entry.get("msg")):
            out.append(entry)
    return out


def _committed_everywhere(net, tx: str, members) -> bool:
    return all(net.rpc(i, "get_tx", {"hash": tx}, timeout=3).get("status") == "committed" for i in members)


def test_full_data_dir_pauses_one_member_which_resumes_and_agrees(testnet, tmpfs):
    net = testnet(4)
    victim, info = 3, net.nodes[3]
    data = tmpfs(info.home / "data", "16m")
    others = [0, 1, 2]
    net.start()
    net.wait_ready(timeout=60)
    assert _submit(info, "warm").get("result", {}).get("status") == "pending"

    filler = _fill(data)
    # Txs keep coming to the full member; one of them (or the consensus traffic they cause) meets ENOSPC.
    deadline, k, refusal = time.monotonic() + 20, 0, None
    while refusal is None:
        assert time.monotonic() < deadline, "the full member never refused a tx"
        k += 1
        reply = _submit(info, f"fill-{k}")
        assert net.procs[victim].poll() is None, (info.home / "node.log").read_text()[-3000:]
        if "error" in reply:
            refusal = reply["error"]
        time.sleep(0.05)
    assert refusal["code"] == -32004 and refusal["data"]["retry_after"] > 0, refusal
    assert "disk full" in refusal["message"], refusal
    lines = _disk_full_lines(info.home / "node.log")
    assert len(lines) == 1, f"want ONE disk-full line, got {lines}"
    assert str(data) in lines[0]["msg"] and "bytes free" in lines[0]["msg"], lines[0]
    assert net.rpc(victim, "status")["disk_full"] is True

    # The other three carry on without it.
    tx = _submit(net.nodes[0], "while-full")["result"]["tx"]
    net.wait_until(lambda: _committed_everywhere(net, tx, others), 20, "a tx commits on the other three")
    assert net.procs[victim].poll() is None, "the full member exited"

    filler.unlink()  # space returns
    back = time.monotonic()
    net.wait_until(lambda: net.rpc(victim, "status")["disk_full"] is False, 30, "the member resumes by itself")
    tx = _submit(info, "after")["result"]["tx"]
    net.wait_until(lambda: _committed_everywhere(net, tx, range(4)), 30,
                   "a tx submitted to the resumed member commits on all four")
    target = max(net.height(i) for i in others)
    net.wait_until(lambda: net.height(victim) >= target, 15, "the resumed member catches up")
    print(f"disk full: resumed and caught up {time.monotonic() - back:.1f} s after space returned")
    chains = [net.rpc(i, "blocks", {"from": 1})["blocks"] for i in range(4)]
    upto = min(len(c) for c in chains)
    assert upto >= 2
    for i in range(1, 4):
        assert [(b["hash"], b["header"]) for b in chains[i][:upto]] == \
               [(b["hash"], b["header"]) for b in chains[0][:upto]], f"members 0 and {i} differ"
    assert len(_disk_full_lines(info.home / "node.log")) == 1

    # kill -9, and the disk is full when it comes back (systemd restarts it): it waits, saying so, then starts.
    net.kill(victim)
    filler = _fill(data)
    net.start(victim)
    # a node process's start (imports alone took 3-6 s here with a testnet running) before its first line
    net.wait_until(lambda: len(_disk_full_lines(info.home / "node.log")) == 2, 60, "a disk-full line at start")
    assert "cannot open" in _disk_full_lines(info.home / "node.log")[1]["msg"]
    assert net.procs[victim].poll() is None, "the member exited instead of waiting for space"
    filler.unlink()
    tx = _submit(net.nodes[1], "restarted")["result"]["tx"]
    net.wait_until(lambda: _committed_everywhere(net, tx, range(4)), 30, "the restarted member commits again")
    net.stop_all()  # before the tmpfs goes
