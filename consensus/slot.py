"""Per-height consensus state: the accepted proposal, payloads by digest, votes, and the certificates."""

from __future__ import annotations

from typing import NamedTuple

from .certificate import Certificate
from .invariants import InvariantViolation

Signatures = tuple[tuple[int, bytes], ...]
VOTE_VIEWS = 2  # views per member, kind and height whose votes a slot keeps (Slot.voters)


class Proposal(NamedTuple):
    view: int
    digest: bytes


class Prepared(NamedTuple):
    """A prepared certificate: 2f+1 prepare votes (the pre-prepare counts as the primary's) for digest in view."""
    view: int
    digest: bytes
    votes: Signatures


class Slot:
    __slots__ = ("height", "proposal", "assigned_in", "pending", "payloads", "prepares", "commits", "prepared",
                 "certificate", "fetch_tick", "voters")

    def __init__(self, height: int) -> None:
        self.height = height
        self.proposal: Proposal | None = None  # accepted as that view's proposal
        # the view whose NEW-VIEW assigned the proposal (validated by f+1 honest members, and this replica's
        # vote by assignment); None when it came from a pre-prepare. A view, not a flag: a mark left by an
        # earlier view's NEW-VIEW must not pass a later view's pre-prepare off as assigned (simulator seed 158).
        self.assigned_in: int | None = None
        self.pending: Proposal | None = None  # a pre-prepare waiting for its payload
        self.payloads: dict[bytes, bytes] = {}
        self.prepares: dict[tuple[int, bytes], dict[int, bytes]] = {}  # (view, digest) -> member -> sig
        self.commits: dict[tuple[int, bytes], dict[int, bytes]] = {}
        self.prepared: Prepared | None = None  # the highest-view prepared certificate
        self.certificate: Certificate | None = None
        self.fetch_tick = -1
        # (table, member) -> {view: digest}: at most one vote per member, kind, view and height, and only the
        # member's VOTE_VIEWS newest views, so one member can never hold more than that many table entries
        self.voters: dict[tuple[str, int], dict[int, bytes]] = {}

    def add_vote(self, kind: str, v: int, d: bytes, member: int, sig: bytes) -> str | None:
        """Count one member's vote ("p": prepare, the pre-prepare included; "c": commit); None if counted, else
        why not ("duplicate", "equivocating_vote", "old_view_vote").

        Bounded by member, not by digest: a member has at most one vote per kind, view and height (a second,
        different one was already turned into evidence by Replica.note_vote and is not a table entry), and
        only its VOTE_VIEWS newest views are kept. So whatever one member sends, it holds at most VOTE_VIEWS
        entries per kind and height and can never crowd out another member's vote. Honest members vote in
        ascending views, so dropping a member's oldest view loses nothing it needs."""
        table = self.prepares if kind == "p" else self.commits
        mine = self.voters.setdefault((kind, member), {})
        prev = mine.get(v)
        if prev is not None:
            return "equivocating_vote" if prev != d else "duplicate"
        if len(mine) >= VOTE_VIEWS:
            oldest = min(mine)
            if oldest > v:
                return "old_view_vote"
            od = mine.pop(oldest)
            votes = table.get((oldest, od))
            if votes is not None:
                votes.pop(member, None)
                if not votes:
                    del table[(oldest, od)]
        mine[v] = d
        table.setdefault((v, d), {})[member] = sig
        if not (len(mine) <= VOTE_VIEWS):
            raise InvariantViolation("a member holds at most VOTE_VIEWS votes per kind and height")
        return None

    def known_digests(self) -> set[bytes]:
        """Digests whose payload this replica may need: the accepted or pending proposal, the prepared
        certificate, the commit certificate. A lone member's vote is not enough: PAYLOADs are up to 8 MiB."""
        out = set()
        for x in (self.proposal, self.pending, self.prepared):
            if x is not None:
                out.add(x.digest)
        if self.certificate is not None:
            out.add(self.certificate.digest)
        return out
