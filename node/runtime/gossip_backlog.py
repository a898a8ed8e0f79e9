"""Tx batches from other members, waiting for their checks: a queue per member, served round-robin.

Before this there was one shared queue of 64 batches between the router (node.py `_inbox_loop`) and the
checks (`_gossip_loop`), and the router waited whenever it was full, with every member's consensus frames
behind it: a member gossiping valid txs as fast as it could delayed everyone's votes by however long the
checks of its batches took. Now the router never waits, the checks take the members in turn (deficit round
robin over bytes, so a member sending 8 MiB batches gets no more checking per turn than one sending small
ones), and a member with PEER_BYTES (or PEER_BATCHES) waiting has its further batches dropped until the
checks catch up, so one member's flood costs the others neither votes nor their turn. The bound is mostly
bytes: after a link comes back the network delivers what queued while it was down, thousands of small
batches from an honest member, which should be checked rather than dropped.

A dropped batch is not lost: its txs wait in the sending member's mempool, which sends them again after
`mempool.rebroadcast_after`, and a proposal naming a tx this node lacks makes it fetch the tx. Holding the
member's stream instead (not reading it) was tried and measured: its consensus frames share that stream, so
a node whose checks fell behind stopped hearing the others' votes, fell behind, and started a view change
(docs/PERFORMANCE.md, 2026-12-04).
"""

from __future__ import annotations

from collections import OrderedDict, deque

import trio

PEER_BYTES = 32 << 20    # bytes one member may have waiting; beyond, its new batches are dropped
PEER_BATCHES = 4096      # or batches
QUANTUM = 256 << 10      # bytes of batches a member's turn adds to its credit (a batch is at most 8 MiB)


class GossipBacklog:
    def __init__(self, *, peer_batches: int = PEER_BATCHES, peer_bytes: int = PEER_BYTES,
                 quantum: int = QUANTUM):
        assert peer_batches >= 1 and peer_bytes > 0 and quantum > 0
        self.peer_batches, self.peer_bytes, self.quantum = peer_batches, peer_bytes, quantum
        # members with batches waiting, the one whose turn it is first; a member whose turn ends goes last
        self._queues: OrderedDict[str, deque[bytes]] = OrderedDict()
        self._bytes: dict[str, int] = {}
        self._credit: dict[str, int] = {}  # bytes a member may still have taken in its turns (deficit)
        self._turn: str | None = None      # whose turn it is (it got its quantum)
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
            self._credit[peer] = 0
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
        while True:  # ends: each pass gives the member first a quantum or moves on to one that has credit
            peer, q = next(iter(self._queues.items()))
            if self._turn != peer:
                self._turn = peer
                self._credit[peer] += self.quantum
            if self._credit[peer] >= len(q[0]):
                break
            self._queues.move_to_end(peer)  # its turn is over; it keeps its credit for the next
            self._turn = None
        data = q.popleft()
        self._credit[peer] -= len(data)
        self._bytes[peer] -= len(data)
        self.batches -= 1
        if not q:  # nothing waits: no credit saved up for later (a member cannot bank turns)
            del self._queues[peer], self._bytes[peer], self._credit[peer]
            self._turn = None
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
            del self._bytes[peer], self._credit[peer]
            if self._turn == peer:
                self._turn = None

    def status(self) -> str:
        waiting = ", ".join(f"{peer[-8:]} {len(q)}" for peer, q in self._queues.items())
        return f"{self.batches} batches ({waiting or 'none'}), {self.dropped} dropped so far"
