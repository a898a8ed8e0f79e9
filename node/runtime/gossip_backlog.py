"""Tx batches from other members, waiting for their checks: a queue per member, served round-robin.

Before this there was one shared queue of 64 batches between the router (node.py `_inbox_loop`) and the
checks (`_gossip_loop`), and the router waited whenever it was full. Every member's consensus frames then
waited behind one member's tx batches: a member gossiping valid txs as fast as it could delayed everyone's
votes by however long the checks of its backlog took. Now the router never waits. A member whose own queue
reaches its bounds is held at the network (its stream is not read until its queue is down to half), which
slows that member's stream alone, and the checks take the members' batches in turn, so one member's flood
delays only its own batches.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable

import trio

PEER_BATCHES = 32        # batches one member may have waiting before its stream is held
PEER_BYTES = 16 << 20    # or bytes (a batch is at most gossip.MAX_BATCH_BYTES)


class GossipBacklog:
    def __init__(self, hold: Callable[[str], object], release: Callable[[str], object], *,
                 peer_batches: int = PEER_BATCHES, peer_bytes: int = PEER_BYTES):
        assert peer_batches >= 2 and peer_bytes > 0
        self._hold, self._release = hold, release
        self.peer_batches, self.peer_bytes = peer_batches, peer_bytes
        # members with batches waiting, in the order they are served next; a served member goes to the end
        self._queues: OrderedDict[str, deque[bytes]] = OrderedDict()
        self._bytes: dict[str, int] = {}
        self._held: set[str] = set()
        self._ready = trio.Event()
        self.batches = 0   # waiting, all members together
        self.holds = 0     # times a member's stream was held (counter, for /metrics)

    def __len__(self) -> int:
        return self.batches

    def held(self) -> frozenset[str]:
        return frozenset(self._held)

    def put(self, peer: str, data: bytes) -> None:
        """Queue a batch; never waits. A batch the network has already read is always taken (the member is
        held once its queue reaches the bounds, so it overshoots them by at most what one read delivered)."""
        q = self._queues.get(peer)
        if q is None:
            q = self._queues[peer] = deque()
            self._bytes[peer] = 0
        q.append(data)
        self._bytes[peer] += len(data)
        self.batches += 1
        self._ready.set()
        if peer not in self._held and (len(q) >= self.peer_batches or self._bytes[peer] >= self.peer_bytes):
            self._held.add(peer)
            self.holds += 1
            self._hold(peer)

    def take_nowait(self) -> tuple[str, bytes]:
        """The next member's oldest batch; trio.WouldBlock when none waits."""
        if not self._queues:
            raise trio.WouldBlock
        peer, q = next(iter(self._queues.items()))
        data = q.popleft()
        self._bytes[peer] -= len(data)
        self.batches -= 1
        if q:
            self._queues.move_to_end(peer)
        else:
            del self._queues[peer]
            del self._bytes[peer]
        if peer in self._held and len(q) <= self.peer_batches // 2 and self._bytes.get(peer, 0) <= self.peer_bytes // 2:
            self._held.discard(peer)
            self._release(peer)
        assert self.batches == sum(map(len, self._queues.values()))
        return peer, data

    async def take(self) -> tuple[str, bytes]:
        while not self._queues:
            self._ready = trio.Event()
            await self._ready.wait()
        return self.take_nowait()

    def forget(self, peer: str) -> None:
        """A member left: drop its batches and stop holding it."""
        q = self._queues.pop(peer, None)
        if q is not None:
            self.batches -= len(q)
            del self._bytes[peer]
        if peer in self._held:
            self._held.discard(peer)
            self._release(peer)

    def status(self) -> str:
        waiting = ", ".join(f"{peer[-8:]} {len(q)}" for peer, q in self._queues.items())
        return f"{self.batches} batches ({waiting or 'none'}), {len(self._held)} members held"
