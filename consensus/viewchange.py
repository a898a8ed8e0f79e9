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

from . import messages as m
from . import wal as walrec
from .actions import Broadcast, CancelTimer, Persist, Send, SetTimer
from .certificate import commit_signing_bytes
from .invariants import check
from .messages import ENTRY_PREPARED, Message, checkpoint_signing_bytes, vote_signing_bytes

COSTLY_PER_TICK = 2  # full VIEW-CHANGE / NEW-VIEW checks per member, tick and view (ViewChanges._costly_check)


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
    vc: m.ViewChange = msg.body
    w, sh = vc.new_view, vc.stable_height
    if w == 0:
        return "view change to view 0"
    if sh % k:
        return "stable height is not a checkpoint"
    if sh == 0:
        if vc.stable_proof or vc.stable_digest:
            return "proof for the genesis checkpoint"
    elif not quorum_valid(crypto, n, q, vc.stable_proof, checkpoint_signing_bytes(chain_id, sh, vc.stable_digest)):
        return "stable checkpoint proof"
    heights = set()
    for e in vc.entries:
        if not sh < e.height <= sh + window or e.height in heights:
            return "entry outside the window or repeated"
        if e.view >= w:
            return "entry from a view not before the new one"
        heights.add(e.height)
        signed = (vote_signing_bytes(chain_id, e.view, e.height, e.digest) if e.kind == ENTRY_PREPARED
                  else commit_signing_bytes(chain_id, e.view, e.height, e.digest))
        if not quorum_valid(crypto, n, q, e.signatures, signed):
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
    best = max(vcs, key=lambda x: (x.body.stable_height, x.sender)).body
    sh = best.stable_height
    chosen: dict[int, tuple[int, bytes]] = {}
    for vc in vcs:
        for e in vc.body.entries:
            h = e.height
            if h <= sh:
                continue
            cur = chosen.get(h)
            # Highest view wins; equal views with different digests need more than f faulty members,
            # the tie-break only keeps every replica's plan identical.
            if cur is None or (e.view, e.digest) > cur:
                chosen[h] = (e.view, e.digest)
    return NewViewPlan(sh, best.stable_digest, best.stable_proof, tuple((h, chosen[h][1]) for h in sorted(chosen)))


class ViewChanges:
    """The view-change protocol of one replica, a component with its own state: the VIEW-CHANGEs received,
    its own, the NEW-VIEW it last entered (forwarded to laggards), the ("vc", view) timer and the budget of
    costly checks. The replica starts a view change (start) and forwards VIEW-CHANGE and NEW-VIEW messages;
    this component calls back only Replica.emit/drop/sign/backoff/start_view_change/enter_view,
    prepared_proofs (its VIEW-CHANGE entries), note_vote, answer_budget and peer_views, and reads the
    replica's view, phase, stable checkpoint, ticks and failed view changes."""

    __slots__ = ("replica", "config", "received", "mine", "entered_wire", "entered_view", "timer", "costly")

    def __init__(self, replica) -> None:
        self.replica = replica
        self.config = replica.config
        self.received: dict[int, Message] = {}  # newest valid VIEW-CHANGE per member (this replica's too)
        self.mine: bytes | None = None          # this replica's VIEW-CHANGE for its current view change
        self.entered_wire: bytes | None = None  # the newest NEW-VIEW entered (forwarded to laggards)
        self.entered_view = 0
        self.timer: tuple | None = None          # ("vc", w) once 2f+1 members gave up on every view before w
        self.costly: dict[int, tuple[tuple[int, int], int]] = {}  # member -> ((tick, view), costly checks)

    def restored(self, view: int, wire: bytes | None) -> None:
        self.entered_view, self.entered_wire = view, wire

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.replica.emit(CancelTimer(self.timer))
            self.timer = None

    def new_view_for(self, view: int, in_view_change: bool) -> bytes | None:
        """The NEW-VIEW to forward to a peer in `view`: the newest one entered, if the peer is in an older
        view or still waiting for that one (even from a later view change: a NEW-VIEW proves itself)."""
        if self.entered_wire is not None and (view < self.entered_view
                                              or (view == self.entered_view and in_view_change)):
            return self.entered_wire
        return None

    def retransmit(self) -> None:
        if self.mine is not None:
            self.replica.emit(Broadcast(self.mine))

    def broadcast_view_change(self) -> None:
        r = self.replica
        w = r.view
        stable = r.stable
        vc = m.ViewChange(w, stable.height, stable.state_digest, stable.proof, r.prepared_proofs(w))
        msg = r.sign(m.VIEWCHANGE, vc)
        self.mine = msg.encode()
        self.received[r.id] = msg
        r.emit(Broadcast(self.mine))
        self.check_quorum()

    def on_view_change(self, msg: Message, sender: int, data: bytes) -> None:
        r = self.replica
        w = msg.body.new_view
        if w < r.view or (w == r.view and not r.in_view_change):
            if self.entered_wire is not None and w <= self.entered_view and r.answer_budget(sender):
                r.emit(Send(sender, self.entered_wire))  # the sender missed the NEW-VIEW
            return r.drop("stale_view_change")
        old = self.received.get(msg.sender)
        if old is not None and old.body.new_view >= w:
            r.stats["duplicate"] += 1
            return
        if w > self._view_ceiling():
            return r.drop("far_view_change")
        if not self._costly_check(msg.sender):
            return r.drop("rate_limited_view_change")
        err = check_view_change(msg, r.chain_id, r.crypto, r.n, r.quorum, r.checkpoint_interval, r.window)
        if err is not None:
            return r.drop("bad_view_change")
        self.received[msg.sender] = msg
        check(len(self.received) <= r.n, "view changes: one per member")
        # f+1 members want a later view: at least one is honest, join them (PBFT sec. 4.5.2).
        views = sorted((x.body.new_view for i, x in self.received.items() if i != r.id and x.body.new_view > r.view),
                       reverse=True)
        if len(views) > r.f:
            r.stats["joined_view_change"] += 1
            r.start_view_change(views[r.f])
        elif r.in_view_change:
            self.check_quorum()

    def _view_ceiling(self) -> int:
        """Highest view whose VIEW-CHANGE is accepted: one rotation of primaries above this replica's view or
        above the view f+1 other members report in STATUS (at least one of them honest). One member alone
        cannot park a VIEW-CHANGE for a huge view here, where it would be kept and counted toward every
        later view-change timer; a replica far behind still follows f+1 members to their view."""
        r = self.replica
        claims = sorted(r.peer_views(), reverse=True)
        base = claims[r.f] if len(claims) > r.f else 0
        return max(r.view, base) + r.n

    def _costly_check(self, member: int) -> bool:
        """A VIEW-CHANGE for a new view costs up to L*q + q signature checks, a NEW-VIEW q times that: each
        member (transport sender) gets COSTLY_PER_TICK of them per tick and per view this replica is in.
        Honest members send one VIEW-CHANGE per view change and repeat it every tick, so a refused one is
        simply checked a tick later."""
        key = (self.replica.ticks, self.replica.view)
        seen, used = self.costly.get(member, (key, 0))
        if seen != key:
            used = 0
        if used >= COSTLY_PER_TICK:
            return False
        self.costly[member] = (key, used + 1)
        return True

    def check_quorum(self) -> None:
        r = self.replica
        if not r.in_view_change:
            return
        w = r.view
        group = {i: x for i, x in self.received.items() if x.body.new_view == w}
        # The timer runs once 2f+1 members gave up on every view before w (PBFT waits for 2f+1 VIEW-CHANGEs
        # for w itself; a member that already moved past w no longer repeats its VIEW-CHANGE for w, and
        # without counting it a replica could wait forever).
        support = sum(1 for x in self.received.values() if x.body.new_view >= w)
        if support >= r.quorum and self.timer is None:
            self.timer = ("vc", w)
            r.emit(SetTimer(self.timer, r.backoff(self.config.view_change_timeout, r.failed_view_changes - 1)))
        if len(group) >= r.quorum and r.config.primary(w) == r.id:
            chosen = [group[r.id]] + [group[i] for i in sorted(group) if i != r.id][: r.quorum - 1]
            check(len(chosen) >= r.quorum, "a NEW-VIEW holds 2f+1 VIEW-CHANGEs")
            plan = plan_new_view(chosen)
            asg = tuple(m.Assignment(h, d, r.crypto.sign(m.vote_signing_bytes(r.chain_id, w, h, d)))
                        for h, d in plan.assignments)
            wire = r.sign(m.NEWVIEW, (w, tuple(x.encode() for x in chosen), asg)).encode()
            r.emit(Persist(walrec.newview_record(w, wire)))
            r.emit(Broadcast(wire))
            self._enter(w, wire, plan, asg)

    def on_timer(self, timer) -> None:
        r = self.replica
        if timer != self.timer:
            return r.drop("stale_timer")
        self.timer = None
        if r.in_view_change and timer[1] == r.view:
            r.stats["view_change_timeout"] += 1
            r.start_view_change(r.view + 1)

    def on_new_view(self, msg: Message, sender: int, data: bytes) -> None:
        r = self.replica
        nv: m.NewView = msg.body
        w = nv.view
        if w < r.view or (w == r.view and not r.in_view_change):
            r.stats["duplicate"] += 1
            return
        if msg.sender != self.config.primary(w):
            return r.drop("not_primary")
        if not self._costly_check(sender):
            return r.drop("rate_limited_new_view")
        vcs, senders = [], set()
        for wire in nv.view_changes:
            try:
                vc = m.decode(wire, r.n, self.config.max_message_bytes, r.window)
            except m.DecodeError:
                return r.drop("bad_new_view")
            if vc.kind != m.VIEWCHANGE or vc.body.new_view != w or vc.sender in senders:
                return r.drop("bad_new_view")
            held = self.received.get(vc.sender)
            known = held is not None and held.encode() == wire  # checked when it arrived on its own
            if not known and (not m.verify(r.crypto, r.chain_id, vc) or check_view_change(
                    vc, r.chain_id, r.crypto, r.n, r.quorum, r.checkpoint_interval, r.window)):
                return r.drop("bad_new_view")
            senders.add(vc.sender)
            vcs.append(vc)
        if len(vcs) < r.quorum:
            return r.drop("bad_new_view")
        plan = plan_new_view(vcs)
        if tuple((a.height, a.digest) for a in nv.assignments) != plan.assignments:
            return r.drop("bad_new_view")
        for a in nv.assignments:
            if not r.crypto.verify(msg.sender, m.vote_signing_bytes(r.chain_id, w, a.height, a.digest), a.signature):
                return r.drop("bad_new_view")
        for a in nv.assignments:  # each assignment is the new primary's signed prepare vote: an equivocation source
            r.note_vote("prepare", msg.sender, w, a.height, a.digest, a.signature)
        r.emit(Persist(walrec.newview_record(w, data)))
        if w > r.view:
            r.failed_view_changes += 1
        self._enter(w, data, plan, nv.assignments)

    def _enter(self, w: int, wire: bytes, plan: NewViewPlan, asg) -> None:
        check(w > self.entered_view, "a replica enters each view once, on one NEW-VIEW")
        self.cancel_timer()
        self.entered_wire, self.entered_view = wire, w
        self.mine = None
        self.received = {i: x for i, x in self.received.items() if x.body.new_view > w}
        self.replica.enter_view(w, plan, asg)
