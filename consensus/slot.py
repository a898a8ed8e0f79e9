"""Per-height consensus state: the accepted proposal, payloads by digest, votes, and the certificates."""

from __future__ import annotations

from .certificate import Certificate


class Slot:
    __slots__ = ("height", "pp", "nv", "pending", "payloads", "prepares", "commits", "prepared", "cert",
                 "fetch_tick", "voters")

    def __init__(self, height: int) -> None:
        self.height = height
        self.pp: tuple[int, bytes] | None = None       # (view, digest) accepted as that view's proposal
        # the view whose NEW-VIEW assigned pp (validated by f+1 honest members, and this replica's vote by
        # assignment); None when pp came from a pre-prepare. A view, not a flag: a mark left by an earlier
        # view's NEW-VIEW must not pass a later view's pre-prepare off as assigned (simulator seed 158).
        self.nv: int | None = None
        self.pending: tuple[int, bytes] | None = None  # a pre-prepare waiting for its payload
        self.payloads: dict[bytes, bytes] = {}
        self.prepares: dict[tuple[int, bytes], dict[int, bytes]] = {}  # (view, digest) -> member -> sig
        self.commits: dict[tuple[int, bytes], dict[int, bytes]] = {}
        self.prepared: tuple[int, bytes, tuple[tuple[int, bytes], ...]] | None = None  # best prepared cert
        self.cert: Certificate | None = None
        self.fetch_tick = -1
        # (table, member) -> {view: digest}: at most one vote per member, kind, view and height, and only the
        # member's VOTE_VIEWS newest views, so one member can never hold more than that many table entries
        self.voters: dict[tuple[str, int], dict[int, bytes]] = {}

    def known_digests(self) -> set[bytes]:
        """Digests whose payload this replica may need: the accepted or pending proposal, the prepared
        certificate, the commit certificate. A lone member's vote is not enough: PAYLOADs are up to 8 MiB."""
        out = set()
        for x in (self.pp, self.pending, self.prepared):
            if x is not None:
                out.add(x[1])
        if self.cert is not None:
            out.add(self.cert.digest)
        return out
