"""Checkpoints (PBFT sec. 4.3): every checkpoint_interval heights each replica signs its state digest; 2f+1
matching signatures make the checkpoint stable (the low watermark). Each member's CP_PER_MEMBER newest
votes above the stable checkpoint are kept: bounded, and enough for a replica far behind to learn a stable
checkpoint above itself.

A component of Replica with its own state: the replica adds verified votes (add, which answers the proof
once a quorum matches), records its own vote (record_mine), and adopts a stable checkpoint (adopt)."""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

from .invariants import InvariantViolation

CP_PER_MEMBER = 4  # checkpoint votes kept per member (its newest heights above the stable checkpoint)

Signatures = tuple[tuple[int, bytes], ...]


class StableCheckpoint(NamedTuple):
    height: int
    state_digest: bytes  # b"" for the genesis checkpoint (height 0)
    proof: Signatures    # 2f+1 checkpoint signatures ((member, signature), sorted); () for genesis


GENESIS = StableCheckpoint(0, b"", ())


class Checkpoints:
    __slots__ = ("n", "quorum", "interval", "stable", "votes", "heights_by_member", "my_newest", "my_newest_height")

    def __init__(self, n: int, quorum: int, interval: int) -> None:
        self.n, self.quorum, self.interval = n, quorum, interval
        self.stable = GENESIS
        self.votes: dict[int, dict[int, tuple[bytes, bytes]]] = {}  # height -> member -> (state digest, sig)
        self.heights_by_member: dict[int, list[int]] = {}           # member -> its vote heights, ascending
        self.my_newest: bytes | None = None  # this replica's newest CHECKPOINT (wire), for peers that lack it
        self.my_newest_height = 0

    def record_mine(self, height: int, wire: bytes) -> None:
        self.my_newest, self.my_newest_height = wire, height

    def add(self, member: int, height: int, state_digest: bytes, sig: bytes, stats: Counter) -> Signatures | None:
        """Count one verified checkpoint vote; the proof (2f+1 matching signatures) if height can now become
        stable, else None."""
        votes = self.votes.setdefault(height, {})
        if member in votes:
            stats["duplicate"] += 1
            return None
        votes[member] = (state_digest, sig)
        heights = self.heights_by_member.setdefault(member, [])
        heights.append(height)
        heights.sort()
        while len(heights) > CP_PER_MEMBER:  # each member's newest checkpoints only: bounded, enough to match
            old = heights.pop(0)
            held = self.votes.get(old)
            if held is not None:
                held.pop(member, None)
                if not held:  # an empty height entry is state too: a member sending ever-higher heights
                    del self.votes[old]
        if member not in self.votes.get(height, {}):
            return None  # height itself was the member's oldest
        if not (len(self.votes) <= CP_PER_MEMBER * self.n):
            raise InvariantViolation("checkpoint votes over their bound")
        matching = tuple(sorted((i, s) for i, (x, s) in self.votes[height].items() if x == state_digest))
        return matching if len(matching) >= self.quorum else None

    def adopt(self, stable: StableCheckpoint) -> None:
        """stable becomes the low watermark: everything at or below it is collected."""
        if not (stable.height > self.stable.height):
            raise InvariantViolation("the stable checkpoint never moves back")
        if not (stable.height % self.interval == 0):
            raise InvariantViolation("a stable checkpoint is at a checkpoint height")
        if not (len({i for i, _ in stable.proof}) == len(stable.proof) >= self.quorum):
            raise InvariantViolation("a stable checkpoint has 2f+1 distinct signers")
        self.stable = stable
        h = stable.height
        for x in [x for x in self.votes if x <= h]:
            del self.votes[x]
        for heights in self.heights_by_member.values():
            heights[:] = [x for x in heights if x > h]
