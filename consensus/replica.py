"""The PBFT replica: a deterministic state machine, events in, actions out (no I/O, clock or randomness).

Normal case (Castro & Liskov 2002, sec. 4.2), heights as sequence numbers: the primary of view v sends
PRE-PREPARE(v, h, digest, payload); a backup that validates the payload (app.validate) sends PREPARE; 2f+1
matching votes (the pre-prepare counts as the primary's) make the height *prepared*, and the replica sends
COMMIT; 2f+1 COMMITs form the certificate (consensus/certificate.py) and the block is delivered (Commit
action) in height order. The rest are components with their own state, each behind a narrow interface:
view changes (viewchange.py), catching up and state transfer (catchup.py), checkpoints (checkpoints.py),
equivocation evidence (equivocation.py) and complaints about a slow primary (fairness.py). See
docs/CONSENSUS.md for the protocol and the WAL.

Invariants are checked as the state changes (consensus/invariants.py): a broken one raises
InvariantViolation out of handle(); hostile input never does (it is dropped and counted).
"""

from __future__ import annotations

import enum
from collections import Counter
from typing import NamedTuple

from . import messages as m
from . import wal as walrec
from .actions import Broadcast, CancelTimer, Commit, Persist, ReportEvidence, Send, SetTimer
from .catchup import TRANSFER, CatchUp
from .certificate import Certificate, commit_signing_bytes
from .checkpoints import CP_PER_MEMBER, Checkpoints, StableCheckpoint
from .config import Config
from .equivocation import EVIDENCE_PER_CHECKPOINT, Equivocations
from .events import Executed, MessageReceived, ProposalReady, StateTransferred, TimerFired, WorkPending
from .fairness import Fairness
from .invariants import InvariantViolation, check
from .proposer import Proposer
from .slot import Prepared, Proposal, Slot
from .viewchange import NewViewPlan, ViewChanges, quorum_valid

__all__ = ["CP_PER_MEMBER", "EVIDENCE_PER_CHECKPOINT", "TICK", "InvariantViolation", "Phase", "Replica"]

TICK = ("tick",)


# What moves a replica towards a view change: label (in /metrics and the node's log) -> its stats counter.
# request_timeout and throughput_floor count complaints sent; f+1 complaints count as complaints.
VIEW_CHANGE_TRIGGERS = {"progress_timeout": "progress_timeout", "request_timeout": "request_timeout",
                        "throughput_floor": "throughput_floor", "view_change_timeout": "view_change_timeout",
                        "complaints": "complaint_view_changes", "joined": "joined_view_change"}


class Phase(enum.Enum):
    """NORMAL: in a view: proposals (primary), PREPARE and COMMIT votes, delivery.
    VIEW_CHANGE: gave up on the previous view, waiting for the NEW-VIEW of `view`: PRE-PREPAREs of `view` are
    validated but not voted for, no PREPARE or COMMIT is sent, no proposal requested, and this replica's
    VIEW-CHANGE is retransmitted. Delivery of certified blocks and checkpoints go on in both phases."""
    NORMAL = "normal"
    VIEW_CHANGE = "view_change"


NORMAL, VIEW_CHANGE = Phase.NORMAL, Phase.VIEW_CHANGE


class MyVote(NamedTuple):
    """A vote this replica signed (kept to retransmit it and to refuse any other digest at its slot)."""
    digest: bytes
    wire: bytes
    tick: int  # when it was sent (-1: restored from the WAL)

def _voters(table: dict[tuple[int, bytes], dict[int, bytes]]) -> str:
    """The members behind the best-supported (view, digest) of a vote table, for progress_snapshot."""
    best = max(table.values(), key=len, default={})
    return ",".join(map(str, sorted(best)))


class Replica:
    def __init__(self, config: Config, replica_id: int, crypto, app, wal=(), last_executed: int = 0) -> None:
        if not 0 <= replica_id < config.n:
            raise ValueError("replica_id is not a member index")
        self.config = config
        self.id = replica_id
        self.crypto = crypto
        self.app = app
        self.stats: Counter[str] = Counter()
        self.view_change_snapshot: dict | None = None  # progress_snapshot() when it last started a view change
        self.chain_id = config.chain_id
        self.n, self.f, self.quorum = config.n, config.f, config.quorum
        # any two quorums share an honest member (2q - n >= f + 1), and f faulty members cannot block one
        check(2 * self.quorum - self.n >= self.f + 1 and self.quorum <= self.n - self.f, "quorum size")
        self.checkpoint_interval, self.window = config.checkpoint_interval, config.watermark_window
        self._view = 0
        self._phase = NORMAL
        self.failed_view_changes = 0       # consecutive view changes without a delivered block
        self._last_committed = last_executed  # last height delivered (Commit emitted, or executed before)
        self._last_executed = last_executed
        self.slots: dict[int, Slot] = {}
        self._my_votes: dict[tuple[str, int, int], MyVote] = {}  # ("p"/"c", view, height) -> vote
        self._progress_timer: tuple | None = None
        self.ticks = 0
        self._actions: list = []
        self.checkpoints = Checkpoints(self.n, self.quorum, self.checkpoint_interval)
        self.equivocations = Equivocations(self.chain_id, self.n, self.stats)
        self.view_changes = ViewChanges(self)
        self.catch_up = CatchUp(self, last_executed)
        self.fairness = Fairness(self)
        self.proposer = Proposer(self)
        self._handlers = {m.PREPREPARE: self._on_preprepare, m.PREPARE: self._on_prepare,
                          m.COMMIT: self._on_commit, m.CHECKPOINT: self._on_checkpoint,
                          m.VIEWCHANGE: self.view_changes.on_view_change, m.NEWVIEW: self.view_changes.on_new_view,
                          m.STATUS: self.catch_up.on_status, m.FETCH: self.catch_up.on_fetch,
                          m.PAYLOAD: self.catch_up.on_payload, m.DECIDED: self.catch_up.on_decided,
                          m.COMPLAIN: self.fairness.on_complain}
        self._restore(wal)

    # ---- read-only view for the runtime and the components ------------------------------------------------

    @property
    def view(self) -> int:
        return self._view

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def primary(self) -> int:
        return self.config.primary(self._view)

    @property
    def is_primary(self) -> bool:
        return self.config.primary(self._view) == self.id

    @property
    def in_view_change(self) -> bool:
        return self._phase is VIEW_CHANGE

    @property
    def last_committed(self) -> int:
        """Highest height delivered to the node (Commit emitted, or executed before start/state transfer)."""
        return self._last_committed

    @property
    def highest_proposed(self) -> int:
        """Highest height pre-prepared in the current view. A proposal requested below it fills a gap left by
        a view change and must be answered even if empty; above it the node may wait for transactions."""
        return self.proposer.highest_proposed

    @property
    def entered_new_view(self) -> bytes | None:
        """The NEW-VIEW (wire) this replica last entered a view on; None before its first view change."""
        return self.view_changes.entered_wire

    @property
    def stable(self) -> StableCheckpoint:
        return self.checkpoints.stable

    @property
    def stable_checkpoint(self) -> int:
        """Low watermark: the newest checkpoint height with 2f+1 matching signatures."""
        return self.checkpoints.stable.height

    @property
    def high_watermark(self) -> int:
        return self.checkpoints.stable.height + self.window

    @property
    def state_transfer_pending(self) -> int | None:
        return self.catch_up.transfer_target

    # ---- entry points ------------------------------------------------------------------------------------

    def start(self) -> list:
        self._actions = []
        self.emit(SetTimer(TICK, self.config.retransmit_interval))
        if self._phase is VIEW_CHANGE:
            self.view_changes.broadcast_view_change()
        else:
            for (_kind, v, h), vote in sorted(self._my_votes.items()):
                if v == self._view and h > self._last_committed:
                    self.emit(Broadcast(vote.wire))
        self._broadcast_status()
        if self._last_committed < self.stable.height:
            self.catch_up.request_to_stable()
        self.arm_progress()
        self.proposer.maybe_propose()
        out, self._actions = self._actions, []
        return out

    def handle(self, event) -> list:
        """The actions for one event. Hostile input (a malformed, badly signed or useless message, a bad event
        value) is dropped and counted in stats; a broken invariant raises InvariantViolation (or an
        AssertionError): the replica's state can no longer be trusted, so it must stop, not go on."""
        self._actions = []
        t = type(event)
        if t is MessageReceived:
            self._on_message(event.sender, event.data)
        elif t is TimerFired:
            self._on_timer(event.timer)
        elif t is ProposalReady:
            self.proposer.on_proposal(event.height, event.payload)
        elif t is WorkPending:
            self.proposer.on_work(event.count)
            self.fairness.on_oldest_request(event.oldest, event.oldest_age)
        elif t is Executed:
            self._on_executed(event.height, event.state_digest)
        elif t is StateTransferred:
            self.catch_up.on_transferred(event.height, event.state_digest)
        else:
            self.drop("unknown_event")
        out, self._actions = self._actions, []
        return out

    # ---- the interface the components use ------------------------------------------------------------------

    def emit(self, action) -> None:
        self._actions.append(action)

    def drop(self, reason: str) -> None:
        self.stats["dropped"] += 1
        self.stats["drop_" + reason] += 1

    def sign(self, kind: int, body) -> m.Message:
        return m.sign(self.crypto, self.chain_id, kind, self.id, body)

    def slot(self, h: int) -> Slot:
        s = self.slots.get(h)
        if s is None:
            s = self.slots[h] = Slot(h)
        return s

    def digest(self, payload: bytes) -> bytes | None:
        try:
            d = self.app.digest(payload)
        except Exception:  # the application's bug or refusal, not this replica's: the payload is not usable
            self.stats["app_error"] += 1
            return None
        return d if type(d) is bytes else None

    def cert_valid(self, cert: Certificate) -> bool:
        signed = commit_signing_bytes(self.chain_id, cert.view, cert.height, cert.digest)
        return quorum_valid(self.crypto, self.n, self.quorum, cert.signatures, signed)

    def peer_views(self) -> list[int]:
        return self.catch_up.peer_views()

    def answer_budget(self, sender: int) -> bool:
        return self.catch_up.budget(sender)

    def note_vote(self, kind: str, member: int, v: int, h: int, d: bytes, sig: bytes) -> None:
        """Remember one signed vote per (member, view, height); a second, different one is evidence."""
        low = self.checkpoints.stable.height
        if h <= low or h > low + 2 * self.window:
            return
        evidence = self.equivocations.note(kind, member, v, h, d, sig)
        if evidence is not None:
            self.emit(ReportEvidence(evidence))

    def backoff(self, base: float, k: int) -> float:
        return min(base * (2 ** max(0, min(k, self.config.max_backoff))), max(base, self.config.max_timeout))

    def prepared_proofs(self, w: int) -> tuple[m.ViewChangeEntry, ...]:
        """This replica's best proof per height above its stable checkpoint, for its VIEW-CHANGE to w."""
        sh = self.checkpoints.stable.height
        entries = []
        for h in sorted(self.slots):
            if not sh < h <= sh + self.window:
                continue
            s = self.slots[h]
            cert, prepared = s.certificate, s.prepared
            if cert is not None and cert.view < w:
                entries.append(m.ViewChangeEntry(h, cert.view, cert.digest, m.ENTRY_COMMITTED, cert.signatures))
            elif prepared is not None and prepared.view < w:
                entries.append(m.ViewChangeEntry(h, prepared.view, prepared.digest, m.ENTRY_PREPARED,
                                                 prepared.votes))
        return tuple(entries)

    # ---- phases: leaving a view, entering one ---------------------------------------------------------------

    def start_view_change(self, w: int) -> None:
        """NORMAL (or VIEW_CHANGE to an earlier view) -> VIEW_CHANGE to w."""
        if w <= self._view:
            return
        self.view_change_snapshot = self.progress_snapshot()
        self._cancel_progress()
        self.fairness.cancel_request_timer()
        self.view_changes.cancel_timer()
        self._view = w
        self._phase = VIEW_CHANGE
        self.failed_view_changes += 1
        self.proposer.requested.clear()
        self.stats["view_changes"] += 1
        self.emit(Persist(walrec.view_record(w)))
        self.view_changes.broadcast_view_change()

    def enter_view(self, w: int, plan: NewViewPlan, asg) -> None:
        """VIEW_CHANGE -> NORMAL in view w, on its NEW-VIEW (ViewChanges checked it and logged it)."""
        check(w >= self._view, "the view never decreases")
        self._cancel_progress()
        self._view = w
        self._phase = NORMAL
        self.proposer.requested.clear()
        self.stats["new_views"] += 1
        self.fairness.on_new_view()
        if plan.stable_height > self.checkpoints.stable.height:
            self.proposer.paused = True  # no proposals before the re-proposals are in place
            try:
                self._new_stable(StableCheckpoint(plan.stable_height, plan.stable_digest, plan.stable_proof))
            finally:
                self.proposer.paused = False
        self._apply_assignments(w, asg, send=True)
        is_primary = self.config.primary(w) == self.id
        for slot in list(self.slots.values()):
            p = slot.proposal
            if (p is not None and p.view == w and slot.assigned_in != w and slot.height > self._last_committed
                    and not is_primary):
                # a pre-prepare of view w that overtook its NEW-VIEW was validated (accept_proposal) but not
                # voted for during the view change: vote now, before its peers' prepares can make it commit
                self._vote_prepare(slot, w, p.digest, slot.payloads.get(p.digest))
            for v, d in list(slot.prepares):
                if v == w:
                    self._check_prepared(slot, w, d)
        self.arm_progress()
        self.proposer.maybe_propose()
        self.deliver()

    def _apply_assignments(self, w: int, asg, send: bool) -> None:
        p = self.config.primary(w)
        proposer = self.proposer
        proposer.highest_proposed = 0
        low = max(self.checkpoints.stable.height, self._last_committed)
        for a in asg:
            h, d = a.height, a.digest
            if h <= low:
                continue
            slot = self.slot(h)
            slot.proposal, slot.assigned_in, slot.pending = Proposal(w, d), w, None
            proposer.highest_proposed = max(proposer.highest_proposed, h)
            self._add_vote(slot, w, d, p, a.signature)
            if p == self.id:
                key = ("p", w, h)
                mine = self._my_votes.get(key)
                check(mine is None or mine.digest == d, "a primary's assignment matches its own vote")
                if mine is None:
                    wire = m.encode(m.PREPREPARE, p, m.PrePrepare(w, h, d, None), a.signature)
                    self._my_votes[key] = MyVote(d, wire, self.ticks)
            elif send:
                self._vote_prepare(slot, w, d, slot.payloads.get(d))

    # ---- messages ---------------------------------------------------------------------------------------

    def _futile_vote(self, msg: m.Message) -> str | None:
        """Why a PREPARE or COMMIT (sender already authenticated by the transport) can change nothing, so its
        signature, the costliest step of handling it, need not be checked; None if it must be checked.

        Votes outside the views they may count in are dropped after the check anyway, and a member's second
        vote for one (kind, view, height) is never counted (Slot.voters): it only matters as evidence, and
        only while this replica would still report the member. A member flooding votes for random digests
        and future views then costs one signature check per (kind, view, height), not one per message."""
        vote = msg.body
        v = vote.view
        if msg.kind == m.PREPARE:
            if v != self._view:
                return "stale_view" if v < self._view else "future_view"
            kind = "prepare"
        else:
            if v > self._view + self.n:
                return "future_view"
            kind = "commit"
        return self.equivocations.futile(kind, msg.sender, v, vote.height, vote.digest)

    def _on_message(self, sender, data) -> None:
        if type(sender) is not int or not 0 <= sender < self.n or sender == self.id:
            return self.drop("bad_sender")
        if type(data) is not bytes:
            return self.drop("malformed")
        if len(data) > self.config.max_message_bytes + 4096:
            return self.drop("oversized")
        try:
            msg = m.decode_cached(data, self.n, self.config.max_message_bytes, self.window)
        except m.DecodeError:
            return self.drop("malformed")
        if msg.sender != sender and msg.kind != m.NEWVIEW:  # a NEW-VIEW may be forwarded by anyone
            return self.drop("sender_mismatch")
        if msg.kind == m.PREPARE or msg.kind == m.COMMIT:
            futile = self._futile_vote(msg)
            if futile == "duplicate":  # a retransmission, as counted after a signature check
                self.stats["duplicate"] += 1
                return None
            if futile is not None:
                return self.drop(futile)
        if not m.verify(self.crypto, self.chain_id, msg):
            return self.drop("bad_signature")
        self.stats["received"] += 1
        self._handlers[msg.kind](msg, sender, data)

    def _in_window(self, h: int) -> bool:
        low = self.checkpoints.stable.height
        if h <= self._last_committed or h <= low:
            self.drop("stale_height")
            return False
        if h > low + self.window:
            self.drop("above_window")
            return False
        return True

    def _voting_slot(self, kind: str, msg: m.Message, v: int, h: int, d: bytes) -> Slot | None:
        """The slot a vote for height h counts in, after noting the vote for equivocation checks; None when
        h is outside the watermarks or already committed (the vote then changes nothing)."""
        if not self._in_window(h):
            return None
        self.note_vote(kind, msg.sender, v, h, d, msg.sig)
        slot = self.slot(h)
        if slot.certificate is not None:
            self.drop("already_committed")
            return None
        return slot

    # ---- normal case: PRE-PREPARE, PREPARE, COMMIT ---------------------------------------------------------

    def _on_preprepare(self, msg: m.Message, sender: int, data: bytes) -> None:
        pp: m.PrePrepare = msg.body
        v, h, d, payload = pp.view, pp.height, pp.digest, pp.payload
        if msg.sender != self.config.primary(v):
            return self.drop("not_primary")
        if v != self._view:
            return self.drop("stale_view" if v < self._view else "future_view")
        slot = self._voting_slot("prepare", msg, v, h, d)
        if slot is None:
            return
        if slot.proposal is not None and slot.proposal.view == v:
            if slot.proposal.digest != d:
                return self.drop("conflicting_preprepare")
            self.stats["duplicate"] += 1
            if payload is not None and d not in slot.payloads and self.digest(payload) == d:
                slot.payloads[d] = payload
                self.deliver()
            return
        if slot.pending is not None and slot.pending.view == v and slot.pending.digest != d:
            return self.drop("conflicting_preprepare")
        self._add_vote(slot, v, d, msg.sender, msg.sig)
        if payload is None:
            payload = slot.payloads.get(d)
        if payload is None:
            slot.pending = Proposal(v, d)
            self._fetch(slot, d, to=msg.sender)
            return
        self.accept_proposal(slot, v, d, payload)

    def accept_proposal(self, slot: Slot, v: int, d: bytes, payload: bytes) -> None:
        if self.digest(payload) != d:
            return self.drop("bad_digest")
        if not self._valid(slot.height, payload):
            return self.drop("invalid_proposal")
        slot.payloads[d] = payload
        slot.proposal, slot.assigned_in = Proposal(v, d), None
        slot.pending = None
        if self._phase is NORMAL:
            self._vote_prepare(slot, v, d, payload)
        self._check_prepared(slot, v, d)
        self.arm_progress()
        self.deliver()

    def _valid(self, h: int, payload: bytes) -> bool:
        try:
            return bool(self.app.validate(h, payload))
        except Exception:  # the application refuses by raising too: not this replica's bug
            self.stats["app_error"] += 1
            return False

    def _record_my_vote(self, key: tuple[str, int, int], d: bytes, wire: bytes) -> None:
        """Every vote this replica signs goes through here: one digest per (kind, view, height), ever (the WAL
        carries them across restarts), and never above the high watermark."""
        prev = self._my_votes.get(key)
        if not (prev is None or prev.digest == d):
            raise InvariantViolation("never two votes for different digests at one view and height")
        low = self.checkpoints.stable.height
        if not (low < key[2] <= low + self.window):
            raise InvariantViolation("votes only inside the watermarks")
        self._my_votes[key] = MyVote(d, wire, self.ticks)

    def _vote_prepare(self, slot: Slot, v: int, d: bytes, payload: bytes | None) -> None:
        key = ("p", v, slot.height)
        mine = self._my_votes.get(key)
        if mine is not None:
            if mine.digest != d:
                self.stats["refused_double_vote"] += 1
            return
        if not (self._phase is NORMAL and v == self._view):
            raise InvariantViolation("PREPARE only in the current view, outside a view change")
        self.emit(Persist(walrec.vote_record(v, slot.height, d, payload)))
        msg = self.sign(m.PREPARE, m.Prepare(v, slot.height, d))
        wire = msg.encode()
        self._record_my_vote(key, d, wire)
        self.emit(Broadcast(wire))
        self._add_vote(slot, v, d, self.id, msg.sig)

    def _add_vote(self, slot: Slot, v: int, d: bytes, member: int, sig: bytes) -> bool:
        """Count one member's prepare vote (the pre-prepare included); False if not counted. _add, written out:
        it runs for every prepare vote."""
        refused = slot.add_vote("p", v, d, member, sig)
        if refused is None:
            return True
        if refused == "duplicate":
            self.stats["duplicate"] += 1
        else:
            self.drop(refused)
        return False

    def _add(self, slot: Slot, kind: str, v: int, d: bytes, member: int, sig: bytes) -> bool:
        """Count one member's vote in the slot (bounded per member: Slot.add_vote); False if not counted."""
        refused = slot.add_vote(kind, v, d, member, sig)
        if refused is None:
            return True
        if refused == "duplicate":
            self.stats["duplicate"] += 1
        else:
            self.drop(refused)
        return False

    def _check_prepared(self, slot: Slot, v: int, d: bytes) -> None:
        votes = slot.prepares.get((v, d))
        if not votes or len(votes) < self.quorum:
            return
        if slot.prepared is None or slot.prepared.view < v:
            slot.prepared = Prepared(v, d, tuple(sorted(votes.items())))
        # Commit only what this replica accepted itself: a validated pre-prepare, or a NEW-VIEW assignment
        # (prepared by 2f+1 in an earlier view, so validated by f+1 honest members). 2f+1 prepare signatures
        # alone must not make it commit a block its own validation refused or never saw.
        if (v == self._view and self._phase is NORMAL and slot.prepared.view == v and slot.prepared.digest == d
                and self._accepted(slot, v, d)):
            self._vote_commit(slot, v, d)

    def _accepted(self, slot: Slot, v: int, d: bytes) -> bool:
        """This replica accepted d as view v's proposal at the slot's height and voted for it: its own
        PRE-PREPARE or PREPARE for (v, h, d), or the NEW-VIEW of view v assigned it (the assignment counts
        as the vote; after a restart the PREPARE itself may be in a torn WAL record). Accepting a pre-prepare
        without voting (it arrived in a view change) is not enough: that vote is cast on entering the view."""
        if slot.proposal != (v, d):
            return False
        mine = self._my_votes.get(("p", v, slot.height))
        return (mine is not None and mine.digest == d) or slot.assigned_in == v

    def _vote_commit(self, slot: Slot, v: int, d: bytes) -> None:
        key = ("c", v, slot.height)
        if key in self._my_votes:
            return
        prepared = slot.prepared
        if not (self._accepted(slot, v, d)):
            raise InvariantViolation("COMMIT only for the proposal this replica accepted and voted for")
        if not (prepared is not None and prepared[:2] == (v, d) and len(prepared.votes) >= self.quorum):
            raise InvariantViolation("COMMIT only with a prepared certificate of 2f+1 votes")
        self.emit(Persist(walrec.commit_record(v, slot.height, d, prepared.votes)))
        msg = self.sign(m.COMMIT, m.CommitVote(v, slot.height, d))
        wire = msg.encode()
        self._record_my_vote(key, d, wire)
        self.emit(Broadcast(wire))
        self._add_commit(slot, v, d, self.id, msg.sig)

    def _add_commit(self, slot: Slot, v: int, d: bytes, member: int, sig: bytes) -> None:
        if not self._add(slot, "c", v, d, member, sig):
            return
        votes = slot.commits[(v, d)]
        if len(votes) >= self.quorum and slot.certificate is None:
            slot.certificate = Certificate(slot.height, v, d, tuple(sorted(votes.items())))
            self.deliver()

    def _on_prepare(self, msg: m.Message, sender: int, data: bytes) -> None:
        vote: m.Prepare = msg.body
        v = vote.view
        if v != self._view:
            return self.drop("stale_view" if v < self._view else "future_view")
        slot = self._voting_slot("prepare", msg, v, vote.height, vote.digest)
        if slot is not None and self._add_vote(slot, v, vote.digest, msg.sender, msg.sig):
            self._check_prepared(slot, v, vote.digest)

    def _on_commit(self, msg: m.Message, sender: int, data: bytes) -> None:
        vote: m.CommitVote = msg.body
        v = vote.view
        if v > self._view + self.n:  # a certificate is valid in any view; one rotation ahead is plenty
            return self.drop("future_view")
        slot = self._voting_slot("commit", msg, v, vote.height, vote.digest)
        if slot is not None:
            self._add_commit(slot, v, vote.digest, msg.sender, msg.sig)

    # ---- delivery ---------------------------------------------------------------------------------------------

    def deliver(self) -> None:
        """Commit every certified block in height order (paused while a state transfer runs)."""
        if self.catch_up.transfer_target is not None:
            return
        while True:
            h = self._last_committed + 1
            slot = self.slots.get(h)
            if slot is None or slot.certificate is None:
                return
            cert = slot.certificate
            if not (cert.height == h and len({i for i, _ in cert.signatures}) >= self.quorum):
                raise InvariantViolation("a delivered block has a certificate of 2f+1 distinct members for its height")
            payload = slot.payloads.get(cert.digest)
            if payload is None:
                self._fetch(slot, cert.digest)
                return
            self._last_committed = h
            self.stats["delivered"] += 1
            self.fairness.delivered(len(payload))  # throughput floor (fairness.py)
            self.emit(Commit(h, payload, cert.digest, cert.encode()))
            self._on_progress()

    def _fetch(self, slot: Slot, d: bytes, to: int | None = None) -> None:
        if slot.fetch_tick == self.ticks:  # at most once per retransmit interval
            return
        slot.fetch_tick = self.ticks
        wire = self.sign(m.FETCH, m.Fetch(slot.height, d)).encode()
        self.stats["fetch_sent"] += 1
        self.emit(Send(to, wire) if to is not None else Broadcast(wire))

    def transferred(self, h: int, sd: bytes) -> None:
        """The node synced blocks up to h (CatchUp cleared its transfer): resume delivery after them."""
        if h > self._last_committed:
            self._last_committed = h
            self._on_progress()
        self._last_executed = max(self._last_executed, h)
        if h % self.checkpoint_interval == 0 and h > self.checkpoints.stable.height:
            self.send_checkpoint(h, sd)
        self.deliver()

    # ---- checkpoints and garbage collection -----------------------------------------------------------------

    def _on_executed(self, h, sd) -> None:
        if type(h) is not int or h < 0 or type(sd) is not bytes or not sd or len(sd) > m.MAX_DIGEST:
            return self.drop("bad_event")
        self._last_executed = max(self._last_executed, h)
        if h % self.checkpoint_interval == 0 and h > self.checkpoints.stable.height:
            self.send_checkpoint(h, sd)

    def send_checkpoint(self, h: int, sd: bytes) -> None:
        msg = self.sign(m.CHECKPOINT, m.Checkpoint(h, sd))
        wire = msg.encode()
        self.checkpoints.record_mine(h, wire)
        self.emit(Broadcast(wire))
        self._add_checkpoint(self.id, h, sd, msg.sig)

    def _on_checkpoint(self, msg: m.Message, sender: int, data: bytes) -> None:
        cp: m.Checkpoint = msg.body
        h = cp.height
        if h % self.checkpoint_interval or h == 0:
            return self.drop("bad_checkpoint")
        if h <= self.checkpoints.stable.height:
            return self.drop("stale_checkpoint")
        self.note_vote("checkpoint", msg.sender, 0, h, cp.state_digest, msg.sig)
        self._add_checkpoint(msg.sender, h, cp.state_digest, msg.sig)

    def _add_checkpoint(self, member: int, h: int, sd: bytes, sig: bytes) -> None:
        proof = self.checkpoints.add(member, h, sd, sig, self.stats)
        if proof is not None:
            self._new_stable(StableCheckpoint(h, sd, proof))

    def _new_stable(self, stable: StableCheckpoint) -> None:
        h = stable.height
        if h <= self.checkpoints.stable.height:
            return
        self.deliver()  # deliver what we hold before it is collected
        self.emit(Persist(walrec.stable_record(h, stable.state_digest, stable.proof)))
        self.checkpoints.adopt(stable)
        self.stats["stable_checkpoints"] += 1
        for x in [x for x in self.slots if x <= h]:
            del self.slots[x]
        for key in [k for k in self._my_votes if k[2] <= h]:
            del self._my_votes[key]
        self.equivocations.collect(h)
        if self._last_committed < h and self.catch_up.transfer_target is None:
            self.catch_up.request_to_stable()
        self.proposer.maybe_propose()

    # ---- proposing (the primary; which heights and when: proposer.py) -----------------------------------------

    def has_voted(self, kind: str, v: int, h: int) -> bool:
        return (kind, v, h) in self._my_votes

    def pre_prepare(self, v: int, h: int, d: bytes, payload: bytes) -> None:
        """Propose payload (digest d) at height h of view v, as its primary: the PRE-PREPARE is also its vote."""
        self.emit(Persist(walrec.vote_record(v, h, d, payload)))
        msg = self.sign(m.PREPREPARE, m.PrePrepare(v, h, d, payload))
        self._record_my_vote(("p", v, h), d, m.encode(m.PREPREPARE, self.id, m.PrePrepare(v, h, d, None), msg.sig))
        slot = self.slot(h)
        slot.proposal, slot.assigned_in = Proposal(v, d), None
        slot.payloads[d] = payload
        self.stats["proposed"] += 1
        self.emit(Broadcast(msg.encode()))
        self._add_vote(slot, v, d, self.id, msg.sig)
        self._check_prepared(slot, v, d)

    # ---- timers and progress ------------------------------------------------------------------------------

    def _has_inflight(self) -> bool:
        return any(h > self._last_committed and (s.proposal is not None or s.pending is not None
                                                 or s.certificate is not None)
                   for h, s in self.slots.items())

    def progress_snapshot(self, limit: int = 8) -> dict:
        """What this replica held when it last moved towards a view change, for the node's log: operators ask
        why their member voted against the primary (was nothing proposed, or a proposal stuck waiting for
        its payload or for votes?). Per height above the last committed one: p<view> accepted proposal,
        w a pre-prepare waiting for its payload, P<voters>/C<voters> the members whose PREPAREs/COMMITs
        count for the best-supported digest ("P0,1,2,3 C3": everyone prepared, only this replica's own COMMIT
        arrived), cert the commit certificate, $ the payload held. Also every drop counter (which votes this
        replica threw away, and why), the height of a state transfer under way (delivery waits for it) and the
        last committed height each other member reported."""
        heights = sorted(h for h in self.slots if h > self._last_committed)[:limit]
        slots = []
        for h in heights:
            s = self.slots[h]
            parts = [str(h)]
            if s.proposal is not None:
                parts.append(f"p{s.proposal.view}")
            if s.pending is not None:
                parts.append("w")
            parts.append("P" + _voters(s.prepares))
            parts.append("C" + _voters(s.commits))
            if s.certificate is not None:
                parts.append("cert")
            if any(d in s.payloads for d in s.known_digests()):
                parts.append("$")
            slots.append(" ".join(parts))
        return {"view": self._view, "phase": self._phase.name, "last_committed": self._last_committed,
                "pending_work": self.proposer.pending_work, "oldest_request_held": bool(self.fairness.oldest_request),
                "stable": self.checkpoints.stable.height, "slots": slots,
                "transfer_target": self.catch_up.transfer_target,
                # where the others said they were in their last STATUS: ahead (this replica fell behind) or
                # stuck at the same height (the whole group waited)?
                "peers_committed": {i: st.last_committed for i, st in sorted(self.catch_up.peer_status.items())},
                "drops": {k[5:]: n for k, n in sorted(self.stats.items()) if k.startswith("drop_") and n},
                "duplicates": self.stats["duplicate"]}  # votes received again (retransmissions), not counted

    def _next_block_certified(self) -> bool:
        slot = self.slots.get(self._last_committed + 1)
        return slot is not None and slot.certificate is not None and slot.certificate.digest not in slot.payloads

    def arm_progress(self) -> None:
        if self._phase is VIEW_CHANGE or self.config.primary(self._view) == self.id or self._progress_timer is not None:
            return
        if self.proposer.pending_work > 0 or self._has_inflight():
            self._progress_timer = ("progress", self._view)
            self.emit(SetTimer(self._progress_timer,
                               self.backoff(self.config.progress_timeout, self.failed_view_changes)))

    def _cancel_progress(self) -> None:
        if self._progress_timer is not None:
            self.emit(CancelTimer(self._progress_timer))
            self._progress_timer = None

    def _on_progress(self) -> None:
        if self._phase is NORMAL:
            self.failed_view_changes = 0
        self._cancel_progress()
        self.arm_progress()
        self.proposer.maybe_propose()

    def _on_timer(self, timer) -> None:
        if timer == TICK:
            return self._tick()
        if timer == TRANSFER:
            return self.catch_up.on_transfer_timeout()
        if type(timer) is tuple and len(timer) == 2 and timer[0] == "progress":
            if timer != self._progress_timer:
                return self.drop("stale_timer")
            self._progress_timer = None
            if self._phase is VIEW_CHANGE or self.config.primary(self._view) == self.id:
                return
            if self._next_block_certified():
                # The quorum has already decided the next block and only its payload is still on its way here
                # (a backup behind on the primary's link: 2f+1 small COMMITs overtake one large PRE-PREPARE). A
                # new primary would have to re-propose that same block, so a view change cannot deliver it
                # sooner; it would only take this member out of the quorum. Ask for the payload and wait again.
                self.stats["progress_waited_certified"] += 1
                slot = self.slots[self._last_committed + 1]
                slot.fetch_tick = -1  # ask everybody now, whatever this tick has already asked
                self._fetch(slot, slot.certificate.digest)
                self.arm_progress()
                return
            if self.proposer.pending_work > 0 or self._has_inflight():
                self.stats["progress_timeout"] += 1
                self.start_view_change(self._view + 1)
            return
        if type(timer) is tuple and len(timer) == 2 and timer[0] == "request":
            return self.fairness.on_request_timer(timer)
        if type(timer) is tuple and len(timer) == 2 and timer[0] == "vc":
            return self.view_changes.on_timer(timer)
        self.drop("unknown_timer")

    def _broadcast_status(self) -> None:
        status = m.Status(self._view, self._phase is VIEW_CHANGE, self._last_committed,
                          self.checkpoints.stable.height)
        self.emit(Broadcast(self.sign(m.STATUS, status).encode()))

    def _tick(self) -> None:
        """Retransmission: lost or duplicated messages never stall the protocol for good."""
        self.ticks += 1
        self.emit(SetTimer(TICK, self.config.retransmit_interval))
        self._broadcast_status()
        self.fairness.tick()
        if self._phase is VIEW_CHANGE:
            self.view_changes.retransmit()
        else:
            for (_kind, v, h), vote in sorted(self._my_votes.items(), key=lambda kv: kv[0][2]):
                slot = self.slots.get(h)
                # only votes that have been out for a full interval: the usual in-flight ones are not lost
                if (v == self._view and h > self._last_committed and vote.tick < self.ticks - 1
                        and (slot is None or slot.certificate is None)):
                    self.emit(Broadcast(vote.wire))
        # The next block's certificate first: it asks everybody, and a pending pre-prepare at the same height
        # (whose payload only the primary is asked for, below) must not use up this tick's one fetch.
        slot = self.slots.get(self._last_committed + 1)
        if slot is not None and slot.certificate is not None and slot.certificate.digest not in slot.payloads:
            self._fetch(slot, slot.certificate.digest)
        if self._phase is not VIEW_CHANGE:
            for slot in self.slots.values():
                if slot.pending is not None and slot.pending.view == self._view:
                    self._fetch(slot, slot.pending.digest, to=self.config.primary(self._view))
        self.catch_up.tick()

    # ---- restart from the WAL -------------------------------------------------------------------------------

    def _restore(self, records) -> None:
        """Resume from the WAL: the same view and phase, the same votes (re-signed: deterministic signatures,
        so byte-identical), the prepared certificates, and the NEW-VIEW's assignments."""
        replayed = walrec.replay(records)
        if replayed.bad_records:
            self.stats["bad_wal_record"] += replayed.bad_records
        if replayed.stable is not None:
            self.checkpoints.adopt(StableCheckpoint(*replayed.stable))
        view, in_vc, nv_wire = replayed.view, replayed.in_view_change, replayed.new_view_wire
        self._view, self._phase = view, VIEW_CHANGE if in_vc else NORMAL
        self.view_changes.restored(replayed.new_view_view, nv_wire)
        proposer = self.proposer
        sh = self.checkpoints.stable.height
        for _tag, v, h, d, payload in replayed.votes:
            if h <= sh:
                continue
            if self.config.primary(v) == self.id:
                sig = self.sign(m.PREPREPARE, (v, h, d, None)).sig
                wire = m.encode(m.PREPREPARE, self.id, m.PrePrepare(v, h, d, None), sig)
            else:
                msg = self.sign(m.PREPARE, (v, h, d))
                sig, wire = msg.sig, msg.encode()
            self._my_votes[("p", v, h)] = MyVote(d, wire, -1)
            slot = self.slot(h)
            if payload is not None:
                slot.payloads[d] = payload
            if v == view and not in_vc:
                slot.proposal, slot.assigned_in = Proposal(v, d), None
                if self.config.primary(v) == self.id:
                    proposer.highest_proposed = max(proposer.highest_proposed, h)
            self._add_vote(slot, v, d, self.id, sig)
        for _tag, v, h, d, proof in replayed.commits:
            if h <= sh:
                continue
            msg = self.sign(m.COMMIT, (v, h, d))
            self._my_votes[("c", v, h)] = MyVote(d, msg.encode(), -1)
            slot = self.slot(h)
            if slot.prepared is None or slot.prepared.view < v:
                slot.prepared = Prepared(v, d, proof)
            self._add(slot, "c", v, d, self.id, msg.sig)
        if nv_wire is not None:
            try:
                nv = m.decode(nv_wire, self.n, self.config.max_message_bytes, self.window)
                if nv.kind == m.NEWVIEW and nv.body.view == view:
                    top = proposer.highest_proposed
                    self._apply_assignments(view, nv.body.assignments, send=False)
                    proposer.highest_proposed = max(top, proposer.highest_proposed)
            except m.DecodeError:
                self.stats["bad_wal_record"] += 1
        self._actions = []
