"""Equivocation detection: every verified vote is remembered per (kind, member, view, height) inside the
window; a second, different one becomes evidence (consensus/evidence.py), at most EVIDENCE_PER_CHECKPOINT
reports per offender between two stable checkpoints.

A component of Replica with its own state; the replica gives it each verified vote (note), asks whether a
vote can still change anything before its signature is checked (futile), and collects it at every stable
checkpoint (collect)."""

from __future__ import annotations

from collections import Counter

from .evidence import encode_evidence
from .invariants import InvariantViolation

SEEN_CAP = 100_000  # votes remembered above the stable checkpoint, shared by the members (1/n each)
EVIDENCE_PER_CHECKPOINT = 1  # equivocation reports per offender between two stable checkpoints

VoteKey = tuple[str, int, int, int]  # (kind, member, view, height); kind: "prepare", "commit", "checkpoint"


class Equivocations:
    __slots__ = ("chain_id", "n", "stats", "seen", "seen_per_member", "reported", "reports_per_member")

    def __init__(self, chain_id: str, n: int, stats: Counter) -> None:
        self.chain_id = chain_id
        self.n = n
        self.stats = stats
        self.seen: dict[VoteKey, tuple[bytes, bytes]] = {}  # -> (digest, signature) of the first vote seen
        self.seen_per_member: Counter[int] = Counter()     # entries of `seen` per member: 1/n of the cap each
        self.reported: set[VoteKey] = set()
        self.reports_per_member: Counter[int] = Counter()  # reports per offender since the last stable checkpoint

    def note(self, kind: str, member: int, view: int, height: int, digest: bytes, sig: bytes) -> bytes | None:
        """Remember one signed vote (the caller checked its signature and that height is inside the window);
        the evidence to report if it conflicts with the member's earlier vote for the same slot."""
        key = (kind, member, view, height)
        prev = self.seen.get(key)
        if prev is None:
            if self.seen_per_member[member] < SEEN_CAP // self.n:  # one member cannot fill others' share
                self.seen[key] = (digest, sig)
                self.seen_per_member[member] += 1
            if not (self.seen_per_member[member] <= SEEN_CAP // self.n):
                raise InvariantViolation("equivocation table over its bound")
            return None
        if prev[0] == digest or key in self.reported:
            return None
        self.reported.add(key)
        self.stats["equivocation"] += 1
        # One proof convicts a member; more only cost every honest node a tx to sign, gossip, verify and
        # execute. A member flooding conflicting votes at every height of every view would otherwise make each
        # honest replica report it once per (view, height): tens of evidence txs per height that crowd the
        # mempool and starve consensus (issue 9). So: EVIDENCE_PER_CHECKPOINT reports per offender per stable
        # checkpoint; the equivocation is still counted.
        if self.reports_per_member[member] >= EVIDENCE_PER_CHECKPOINT:
            self.stats["evidence_suppressed"] += 1
            return None
        self.reports_per_member[member] += 1
        return encode_evidence(kind, self.chain_id, member, view, height, prev, (digest, sig))

    def futile(self, kind: str, member: int, view: int, height: int, digest: bytes) -> str | None:
        """Why a vote can change nothing (so its signature need not be checked): "duplicate" of the vote
        remembered, or "equivocating_vote" once the member can no longer be reported; else None."""
        key = (kind, member, view, height)
        prev = self.seen.get(key)
        if prev is None:
            return None
        if prev[0] == digest:
            return "duplicate"
        if key in self.reported or self.reports_per_member[member] >= EVIDENCE_PER_CHECKPOINT:
            return "equivocating_vote"
        return None

    def collect(self, stable_height: int) -> None:
        """A checkpoint became stable: forget votes at or below it, and let every offender be reported again."""
        for key in [k for k in self.seen if k[3] <= stable_height]:
            del self.seen[key]
            self.seen_per_member[key[1]] -= 1
        self.reported = {k for k in self.reported if k[3] > stable_height}
        self.reports_per_member.clear()
