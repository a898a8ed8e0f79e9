"""A peer process killed with kill -9 and restarted (same key, same port) is reached again."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import trio
from network_testkit import PSK, Roster, env_with_repo, running, wait_for

from network.identity import identity_from_seed


def _spawn(roster: Roster, i: int, key_path, members_path, lock_dir) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "network.testpeer", "--key", str(key_path), "--members", str(members_path),
         "--listen", roster.addrs[i], "--psk", PSK.hex(), "--lock-dir", str(lock_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_with_repo(),
    )


async def _ready(proc: subprocess.Popen) -> str:
    line = await trio.to_thread.run_sync(proc.stdout.readline)
    assert line.startswith(b"READY"), (line, proc.stderr.read() if proc.poll() is not None else b"")
    return line.split()[1].decode()


async def _echo_roundtrip(net, peer: str, tag: bytes, n: int = 50) -> None:
    for i in range(n):
        assert net.send(peer, "ping", tag + b"%d" % i)
    with trio.fail_after(15):
        got = []
        while len(got) < n:
            pid, ch, data = await net.inbox.receive()
            if data.startswith(tag):
                assert (pid, ch) == (peer, "echo:ping")
                got.append(data)
    assert got == [tag + b"%d" % i for i in range(n)]


async def _echoed_then_killed(a, peer: str, proc: subprocess.Popen) -> None:
    """The spawned peer comes up, `a` reaches it and gets its echoes, then it is killed with kill -9 and
    `a` sees it gone."""
    assert await _ready(proc) == peer
    await wait_for(lambda: peer in a.connected_peers(), timeout=15)
    await _echo_roundtrip(a, peer, b"before-")
    proc.send_signal(signal.SIGKILL)
    await trio.to_thread.run_sync(proc.wait)
    await wait_for(lambda: peer not in a.connected_peers(), timeout=10)


def _echo_peer_files(tmp_path, seed: int) -> tuple[Roster, object, object]:
    """A roster of two, the subprocess peer's key file and members file. The subprocess peer is not told
    our address, so it never dials us: getting back together relies on our redial, through libp2p's 60 s
    negative dial cache (marked while the peer was down)."""
    r = Roster(2, seed=seed)
    key_path = tmp_path / "p2p.key"
    key_path.write_bytes(identity_from_seed(bytes([seed + 1]) * 32).private_key.serialize())
    key_path.chmod(0o600)
    members_path = tmp_path / "members.json"
    members_path.write_text(json.dumps({r.pids[0]: [], r.pids[1]: r.members[r.pids[1]]}))
    return r, key_path, members_path


@pytest.mark.timeout(60)
async def test_peer_killed_with_sigkill_and_restarted_is_reached_again(tmp_path):
    r, key_path, members_path = _echo_peer_files(tmp_path, 80)
    a = r.net(0)
    peer = r.pids[1]
    ups: list[str] = []
    a.on_peer_up = ups.append  # the application hears of every session (re)established (node: resend txs)
    proc = _spawn(r, 1, key_path, members_path, tmp_path)
    try:
        async with running(a, connect=False):
            await _echoed_then_killed(a, peer, proc)
            assert ups == [peer]
            # messages sent while the peer is down wait in its queue
            queued = [a.send(peer, "ping", b"during-%d" % i) for i in range(10)]
            assert all(queued)
            await wait_for(lambda: a.stats["dial_failures"] >= 2, timeout=10)  # we redial while it is down

            proc = _spawn(r, 1, key_path, members_path, tmp_path)  # same key, same port
            assert await _ready(proc) == peer
            t0 = trio.current_time()
            await wait_for(lambda: peer in a.connected_peers(), timeout=15)
            reconnect_s = trio.current_time() - t0
            await _echo_roundtrip(a, peer, b"after-")
            assert a.stats["connects"] >= 2
            assert ups == [peer] * a.stats["connects"]
            print(f"reconnected {reconnect_s:.2f} s after the restarted peer listened")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.mark.timeout(60)
async def test_frames_for_a_peer_gone_longer_than_stale_after_are_dropped_not_replayed(tmp_path):
    """A member away for longer than `stale_after` gets nothing of its absence when it comes back (its
    queued frames are dropped, later sends refused and counted); frames sent after it is back arrive."""
    r, key_path, members_path = _echo_peer_files(tmp_path, 90)
    a = r.net(0, stale_after=1.0)
    peer = r.pids[1]
    proc = _spawn(r, 1, key_path, members_path, tmp_path)
    try:
        async with running(a, connect=False):
            await _echoed_then_killed(a, peer, proc)
            assert all(a.send(peer, "ping", b"early-%d" % i) for i in range(10))  # a blip: kept
            await wait_for(lambda: not a.send(peer, "ping", b"late"), timeout=10)  # gone: refused
            assert a.stats["dropped_peer_down"] >= 11  # the 10 queued frames and the refused one
            assert a.peer_status()[peer]["queued_frames"] == 0
            assert a.broadcast("ping", b"late-broadcast") == 0

            proc = _spawn(r, 1, key_path, members_path, tmp_path)
            assert await _ready(proc) == peer
            await wait_for(lambda: peer in a.connected_peers(), timeout=15)
            await _echo_roundtrip(a, peer, b"after-")  # asserts the echoes are exactly these, in order
            with trio.move_on_after(1):  # nothing of the absence comes back
                while True:
                    _, _, data = await a.inbox.receive()
                    assert not data.startswith((b"early-", b"late")), data
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
