"""Tx batches from other members, waiting for their checks: a queue per member, served round-robin.

Before this there was one shared queue of 64 batches between the router (node.py `_inbox_loop`) and the
checks (`_gossip_loop`), and the router waited whenever it was full, with every member's consensus frames
behind it: a member gossiping valid txs as fast as it could delayed everyone's votes by however long the
checks of its batches took. Now the router never waits, the checks take the members' batches in turn, and a
member with PEER_BATCHES (or PEER_BYTES) waiting has its further batches dropped until the checks catch up,
so one member's flood costs the others neither votes nor their turn.

A dropped batch is not lost: its txs wait in the sending member's mempool, which sends them again after
`mempool.rebroadcast_after`, and a proposal naming a tx this node lacks makes it fetch the tx. Holding the
member's stream instead (not reading it) was tried and measured: its consensus frames share that stream, so
a node whose checks fell behind stopped hearing the others' votes, fell behind, and started a view change
(docs/PERFORMANCE.md, 2026-12-04).
"""

from __future__ import annotations

from collections import OrderedDict, deque

import trio

PEER_BATCHES = 64        # batches one member may have waiting; beyond, its new batches are dropped
PEER_BYTES = 32 << 20    # or bytes (a batch is at most gossip.MAX_BATCH_BYTES, 8 MiB)


class GossipBacklog:
    def __init__(self, *, peer_batches: int = PEER_BATCHES, peer_bytes: int = PEER_BYTES):
        assert peer_batches >= 1 and peer_bytes > 0
        self.peer_batches, self.peer_bytes = peer_batches, peer_bytes
        # members with batches waiting, in the order they are served next; a served member goes to the end
        self._queues: OrderedDict[str, deque[bytes]] = OrderedDict()
        self._bytes: dict[str, int] = {}
        self._ready = trio.Event()
        self.batches = 0   # waiting, all members together
        self.dropped = 0   # batches dropped because their member had its bound waiting (counter)

    def __len__(self) -> int:
        return self.batches

    def put(self, peer: str, data: bytes) -> bool:
        """Queue a batch; never waits. False (and the batch dropped) when the member has its bound waiting."""
        q = self._queues.get(peer)
        if q is None:
            q = self._queues[peer] = deque()
            self._bytes[peer] = 0
        elif len(q) >= self.peer_batches or self._bytes[peer] + len(data) > self.peer_bytes:
            self.dropped += 1
            return False
        q.append(data)
        self._bytes[peer] += len(data)
        self.batches += 1
        self._ready.set()
        return True

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
        assert self.batches >= len(q) and (q or peer not in self._bytes)
        return peer, data

    async def take(self) -> tuple[str, bytes]:
        while not self._queues:
            self._ready = trio.Event()
            await self._ready.wait()
        return self.take_nowait()

    def forget(self, peer: str) -> None:
        """A member left: drop its batches."""
        q = self._queues.pop(peer, None)
        if q is not None:
            self.batches -= len(q)
            del self._bytes[peer]

    def status(self) -> str:
        waiting = ", ".join(f"{peer[-8:]} {len(q)}" for peer, q in self._queues.items())
        return f"{self.batches} batches ({waiting or 'none'}), {self.dropped} dropped so far"
