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
    for vc in vcs:
        for h, v, d, _kind, _sigs in vc.body[4]:
            if h <= sh:
                continue
            cur = chosen.get(h)
            # Highest view wins; equal views with different digests need more than f faulty members,
            # the tie-break only keeps every replica's plan identical.
            if cur is None or (v, d) > cur:
                chosen[h] = (v, d)
    return NewViewPlan(sh, sd, proof, tuple((h, chosen[h][1]) for h in sorted(chosen)))


class ViewChanges:
    """The replica's side of view changes (a mixin of Replica: all state lives on the replica)."""

    def _start_view_change(self, w: int) -> None:
        if w <= self._view:
            return
        self._cancel_progress()
        self._cancel_request_timer()
        if self._vc_timer is not None:
            self._emit(CancelTimer(self._vc_timer))
            self._vc_timer = None
        self._view = w
        self._in_vc = True
        self._attempts += 1
        self._requested.clear()
        self.stats["view_changes"] += 1
        self._emit(Persist(walrec.view_record(w)))
        self._broadcast_view_change()

    def _broadcast_view_change(self) -> None:
        w = self._view
        sh, sd, proof = self._stable
        entries = []
        for h in sorted(self._slots):
            if not sh < h <= sh + self._L:
                continue
            s = self._slots[h]
            if s.cert is not None and s.cert.view < w:
                entries.append((h, s.cert.view, s.cert.digest, m.ENTRY_COMMITTED, s.cert.signatures))
            elif s.prepared is not None and s.prepared[0] < w:
                entries.append((h, s.prepared[0], s.prepared[1], m.ENTRY_PREPARED, s.prepared[2]))
        msg = self._sign(m.VIEWCHANGE, (w, sh, sd, proof, tuple(entries)))
        self._my_vc = msg.encode()
        self._vcs[self.id] = msg
        self._emit(Broadcast(self._my_vc))
        self._check_vc_quorum()

    def _on_view_change(self, msg: m.Message, sender: int, data: bytes) -> None:
        w = msg.body[0]
        if w < self._view or (w == self._view and not self._in_vc):
            if self._nv_wire is not None and w <= self._nv_view and self._budget(sender):
                self._emit(Send(sender, self._nv_wire))  # the sender missed the NEW-VIEW
            return self._drop("stale_view_change")
        old = self._vcs.get(msg.sender)
        if old is not None and old.body[0] >= w:
            self.stats["duplicate"] += 1
            return
        if w > self._view_ceiling():
            return self._drop("far_view_change")
        if not self._costly_check(msg.sender):
            return self._drop("rate_limited_view_change")
        err = check_view_change(msg, self._chain, self.crypto, self._n, self._q, self._K, self._L)
        if err is not None:
            return self._drop("bad_view_change")
        self._vcs[msg.sender] = msg
        # f+1 members want a later view: at least one is honest, join them (PBFT sec. 4.5.2).
        views = sorted((x.body[0] for i, x in self._vcs.items() if i != self.id and x.body[0] > self._view),
                       reverse=True)
        if len(views) > self._f:
            self._start_view_change(views[self._f])
        elif self._in_vc:
            self._check_vc_quorum()

    def _view_ceiling(self) -> int:
        """Highest view whose VIEW-CHANGE is accepted: one rotation of primaries above this replica's view or
        above the view f+1 other members report in STATUS (at least one of them honest). One member alone
        cannot park a VIEW-CHANGE for a huge view here, where it would be kept and counted toward every
        later view-change timer; a replica far behind still follows f+1 members to their view."""
        claims = sorted((st[0] for st in self._peers.values()), reverse=True)
        base = claims[self._f] if len(claims) > self._f else 0
        return max(self._view, base) + self._n

    def _costly_check(self, member: int) -> bool:
        """A VIEW-CHANGE for a new view costs up to L*q + q signature checks, a NEW-VIEW q times that: each
        member (transport sender) gets COSTLY_PER_TICK of them per tick and per view this replica is in.
        Honest members send one VIEW-CHANGE per view change and repeat it every tick, so a refused one is
        simply checked a tick later."""
        key = (self._ticks, self._view)
        seen, used = self._costly.get(member, (key, 0))
        if seen != key:
            used = 0
        if used >= COSTLY_PER_TICK:
            return False
        self._costly[member] = (key, used + 1)
        return True

    def _check_vc_quorum(self) -> None:
        if not self._in_vc:
            return
        w = self._view
        group = {i: x for i, x in self._vcs.items() if x.body[0] == w}
        # The timer runs once 2f+1 members gave up on every view before w (PBFT waits for 2f+1 VIEW-CHANGEs
        # for w itself; a member that already moved past w no longer repeats its VIEW-CHANGE for w, and
        # without counting it a replica could wait forever).
        support = sum(1 for x in self._vcs.values() if x.body[0] >= w)
        if support >= self._q and self._vc_timer is None:
            self._vc_timer = ("vc", w)
            self._emit(SetTimer(self._vc_timer, self._backoff(self.config.view_change_timeout, self._attempts - 1)))
        if len(group) >= self._q and self.config.primary(w) == self.id:
            chosen = [group[self.id]] + [group[i] for i in sorted(group) if i != self.id][: self._q - 1]
            plan = plan_new_view(chosen)
            asg = tuple((h, d, self.crypto.sign(m.vote_signing_bytes(self._chain, w, h, d)))
                        for h, d in plan.assignments)
            wire = self._sign(m.NEWVIEW, (w, tuple(x.encode() for x in chosen), asg)).encode()
            self._emit(Persist(walrec.newview_record(w, wire)))
            self._emit(Broadcast(wire))
            self._enter_view(w, wire, plan, asg)

    def _on_new_view(self, msg: m.Message, sender: int, data: bytes) -> None:
        w, vc_wires, asg = msg.body
        if w < self._view or (w == self._view and not self._in_vc):
            self.stats["duplicate"] += 1
            return
        if msg.sender != self.config.primary(w):
            return self._drop("not_primary")
        if not self._costly_check(sender):
            return self._drop("rate_limited_new_view")
        vcs, senders = [], set()
        for wire in vc_wires:
            try:
                vc = m.decode(wire, self._n, self.config.max_message_bytes, self._L)
            except m.DecodeError:
                return self._drop("bad_new_view")
            if vc.kind != m.VIEWCHANGE or vc.body[0] != w or vc.sender in senders:
                return self._drop("bad_new_view")
            held = self._vcs.get(vc.sender)
            known = held is not None and held.encode() == wire  # checked when it arrived on its own
            if not known and (not m.verify(self.crypto, self._chain, vc) or check_view_change(
                    vc, self._chain, self.crypto, self._n, self._q, self._K, self._L)):
                return self._drop("bad_new_view")
            senders.add(vc.sender)
            vcs.append(vc)
        if len(vcs) < self._q:
            return self._drop("bad_new_view")
        plan = plan_new_view(vcs)
        if tuple((h, d) for h, d, _s in asg) != plan.assignments:
            return self._drop("bad_new_view")
        for h, d, s in asg:
            if not self.crypto.verify(msg.sender, m.vote_signing_bytes(self._chain, w, h, d), s):
                return self._drop("bad_new_view")
        for h, d, s in asg:  # each assignment is the new primary's signed prepare vote: an equivocation source
            self._note_vote("prepare", msg.sender, w, h, d, s)
        self._emit(Persist(walrec.newview_record(w, data)))
        if w > self._view:
            self._attempts += 1
        self._enter_view(w, data, plan, asg)

    def _enter_view(self, w: int, wire: bytes, plan, asg) -> None:
        if self._vc_timer is not None:
            self._emit(CancelTimer(self._vc_timer))
            self._vc_timer = None
        self._cancel_progress()
        self._view = w
        self._in_vc = False
        self._nv_wire = wire
        self._nv_view = w
        self._my_vc = None
        self._requested.clear()
        self._vcs = {i: x for i, x in self._vcs.items() if x.body[0] > w}
        self.stats["new_views"] += 1
        self._fairness_new_view()
        if plan.stable_height > self._stable[0]:
            self._quiet = True  # no proposals before the re-proposals are in place
            try:
                self._new_stable(plan.stable_height, plan.stable_digest, plan.stable_proof)
            finally:
                self._quiet = False
        self._apply_assignments(w, asg, send=True)
        for slot in list(self._slots.values()):
            if (slot.pp is not None and slot.pp[0] == w and slot.nv != w and slot.height > self._ld
                    and self.config.primary(w) != self.id):
                # a pre-prepare of view w that overtook its NEW-VIEW was validated (_accept_proposal) but not
                # voted for during the view change: vote now, before its peers' prepares can make it commit
                self._vote_prepare(slot, w, slot.pp[1], slot.payloads.get(slot.pp[1]))
            for v, d in list(slot.prepares):
                if v == w:
                    self._check_prepared(slot, w, d)
        self._arm_progress()
        self._maybe_propose()
        self._deliver()

    def _apply_assignments(self, w: int, asg, send: bool) -> None:
        p = self.config.primary(w)
        self._top = 0
        for h, d, sig in asg:
            if h <= self._stable[0] or h <= self._ld:
                continue
            slot = self._slot(h)
            slot.pp, slot.nv, slot.pending = (w, d), w, None
            self._top = max(self._top, h)
            self._add_vote(slot, w, d, p, sig)
            if p == self.id:
                self._my_votes.setdefault(("p", w, h), (d, m.encode(m.PREPREPARE, p, (w, h, d, None), sig), self._ticks))
            elif send:
                self._vote_prepare(slot, w, d, slot.payloads.get(d))
