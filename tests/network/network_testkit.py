"""Shared helpers for the network tests: real py-libp2p hosts on 127.0.0.1, no mocks."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from contextlib import asynccontextmanager

import trio

from network import PeerNetwork
from network.identity import identity_from_seed, peer_id_of
from node.testnet import free_port

PSK = bytes(range(32))
# PortLock files of the test networks go here rather than into /tmp
LOCK_DIR = tempfile.mkdtemp(prefix="radchain-net-tests-")
atexit.register(shutil.rmtree, LOCK_DIR, True)


class Roster:
    """n members with deterministic keys and free loopback ports."""

    def __init__(self, n: int, seed: int = 1) -> None:
        self.keys = [identity_from_seed(bytes([seed + i]) * 32) for i in range(n)]
        self.ports = [free_port() for _ in range(n)]
        self.pids = [peer_id_of(k) for k in self.keys]
        self.addrs = [f"/ip4/127.0.0.1/tcp/{p}" for p in self.ports]
        self.members = {pid: [a] for pid, a in zip(self.pids, self.addrs, strict=True)}

    def net(self, i: int, psk: bytes | None = PSK, **kw) -> PeerNetwork:
        return PeerNetwork(self.keys[i], self.members, psk, self.addrs[i], lock_dir=kw.pop("lock_dir", LOCK_DIR), **kw)




@asynccontextmanager
async def running(*nets: PeerNetwork, connect: bool = True, timeout: float = 10):
    """Start the networks, optionally wait for the full mesh, and cancel them on exit."""
    async with trio.open_nursery() as nursery:
        for net in nets:
            await nursery.start(net.run)
        if connect:
            with trio.fail_after(timeout):
                for net in nets:
                    await net.wait_connected([n.peer_id for n in nets if n is not net])
        yield nursery
        nursery.cancel_scope.cancel()


async def wait_for(pred, timeout: float = 10, poll: float = 0.01):
    """Wait until pred() is true (no sleep-and-hope: a bounded poll of a condition)."""
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(poll)


def env_with_repo() -> dict[str, str]:
    env = dict(os.environ)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class PeerProc:
    """A `python -m network.testpeer` subprocess whose stdout lines are collected by a thread."""

    def __init__(self, argv: list[str], prefix: list[str] | None = None) -> None:
        import subprocess
        import sys
        import threading

        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "network.testpeer", *argv],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_with_repo(),
        )
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self) -> None:
        for raw in self.proc.stdout:
            self.lines.append(raw.decode().rstrip("\n"))

    async def wait_line(self, pred, timeout: float = 15, start: int = 0) -> tuple[int, str]:
        """Index and text of the first line from `start` on that satisfies pred."""
        with trio.fail_after(timeout):
            i = start
            while True:
                while i < len(self.lines):
                    if pred(self.lines[i]):
                        return i, self.lines[i]
                    i += 1
                if self.proc.poll() is not None and i >= len(self.lines):
                    raise AssertionError(f"peer exited {self.proc.returncode}: {self.proc.stderr.read()[-2000:]!r}")
                await trio.sleep(0.02)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
