"""View change (PBFT sec. 4.4): checking a VIEW-CHANGE's proofs and deriving the NEW-VIEW's re-proposals.

A VIEW-CHANGE for view w carries the sender's stable checkpoint (height, state digest, 2f+1 checkpoint
signatures) and, for each height above it in its window, its best proof that a digest was prepared there:
2f+1 prepare votes (ENTRY_PREPARED) or 2f+1 commits (ENTRY_COMMITTED), with the view they were cast in.
The new primary takes 2f+1 of them; every backup recomputes the same plan from the same VIEW-CHANGEs.
A block that committed anywhere was prepared by f+1 honest members, one of which is in any 2f+1 set, so
the highest-view proof at each height names it: it is re-proposed in the new view and no committed block
is lost. Heights in between without any proof were never committed; the new primary proposes fresh blocks
for them (PBFT fills them with null requests; a block chain prefers a real block).
"""

from __future__ import annotations

from dataclasses import dataclass

from .certificate import commit_signing_bytes
from .messages import ENTRY_PREPARED, Message, checkpoint_signing_bytes, vote_signing_bytes


def quorum_valid(crypto, n: int, q: int, sigs, signed: bytes) -> bool:
    """At least q distinct members in range with valid signatures over `signed`."""
    seen = set()
    for i, s in sigs:
        if i in seen or not 0 <= i < n or not crypto.verify(i, signed, s):
            return False
        seen.add(i)
    return len(seen) >= q


def check_view_change(msg: Message, chain_id: str, crypto, n: int, q: int, k: int, window: int) -> str | None:
    """None if the VIEW-CHANGE's proofs hold, else the reason it is rejected (its own signature is checked
    by the caller)."""
    w, sh, sd, proof, entries = msg.body
    if w == 0:
        return "view change to view 0"
    if sh % k:
        return "stable height is not a checkpoint"
    if sh == 0:
        if proof or sd:
            return "proof for the genesis checkpoint"
    elif not quorum_valid(crypto, n, q, proof, checkpoint_signing_bytes(chain_id, sh, sd)):
        return "stable checkpoint proof"
    heights = set()
    for h, v, d, kind, sigs in entries:
        if not sh < h <= sh + window or h in heights:
            return "entry outside the window or repeated"
        if v >= w:
            return "entry from a view not before the new one"
        heights.add(h)
        signed = (vote_signing_bytes(chain_id, v, h, d) if kind == ENTRY_PREPARED
                  else commit_signing_bytes(chain_id, v, h, d))
        if not quorum_valid(crypto, n, q, sigs, signed):
            return "entry certificate"
    return None


@dataclass(frozen=True)
class NewViewPlan:
    stable_height: int
    stable_digest: bytes
    stable_proof: tuple
    assignments: tuple[tuple[int, bytes], ...]  # (height, digest) re-proposed in the new view, ascending


def plan_new_view(vcs: list[Message]) -> NewViewPlan:
    """Deterministic in the set of VIEW-CHANGEs (not their order)."""
    best = max(vcs, key=lambda m: (m.body[1], m.sender))
    sh, sd, proof = best.body[1], best.body[2], best.body[3]
    chosen: dict[int, tuple[int, bytes]] = {}
    for m in vcs:
        for h, v, d, _kind, _sigs in m.body[4]:
            if h <= sh:
                continue
            cur = chosen.get(h)
            # Highest view wins; equal views with different digests need more than f faulty members,
            # the tie-break only keeps every replica's plan identical.
            if cur is None or (v, d) > cur:
                chosen[h] = (v, d)
    return NewViewPlan(sh, sd, proof, tuple((h, chosen[h][1]) for h in sorted(chosen)))
