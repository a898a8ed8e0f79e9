"""The PBFT replica: a deterministic state machine, events in, actions out (no I/O, clock or randomness).

Normal case (Castro & Liskov 2002, sec. 4.2), heights as sequence numbers: the primary of view v sends
PRE-PREPARE(v, h, digest, payload); a backup that validates the payload (app.validate) sends PREPARE; 2f+1
matching votes (the pre-prepare counts as the primary's) make the height *prepared*, and the replica sends
COMMIT; 2f+1 COMMITs form the certificate (consensus/certificate.py) and the block is delivered (Commit
action) in height order. View changes live in viewchange.py, delivery and catching up in catchup.py (mixins
of this class); see docs/CONSENSUS.md for checkpoints, view changes, catch-up and the WAL.
"""

from __future__ import annotations

from collections import Counter

from . import messages as m
from . import wal as walrec
from .actions import Broadcast, CancelTimer, Persist, ReportEvidence, RequestProposal, SetTimer
from .catchup import TRANSFER, CatchUp
from .certificate import Certificate, commit_signing_bytes
from .config import Config
from .events import Executed, MessageReceived, ProposalReady, StateTransferred, TimerFired, WorkPending
from .evidence import encode_evidence
from .fairness import Fairness
from .slot import Slot
from .viewchange import ViewChanges, quorum_valid

__all__ = ["Replica"]

TICK = ("tick",)
_SEEN_CAP = 100_000  # equivocation table bound (entries above the stable checkpoint), shared by the members
CP_PER_MEMBER = 4  # checkpoint votes kept per member (its newest heights above the stable checkpoint)
VOTE_VIEWS = 2  # views per member, kind and height whose votes a slot keeps (Slot.voters)
EVIDENCE_PER_CHECKPOINT = 1  # equivocation reports per offender between two stable checkpoints


class Replica(CatchUp, ViewChanges, Fairness):
    def __init__(self, config: Config, replica_id: int, crypto, app, wal=(), last_executed: int = 0) -> None:
        if not 0 <= replica_id < config.n:
            raise ValueError("replica_id is not a member index")
        self.config = config
        self.id = replica_id
        self.crypto = crypto
        self.app = app
        self.stats: Counter[str] = Counter()
        self._chain = config.chain_id
        self._n, self._f, self._q = config.n, config.f, config.quorum
        self._K, self._L = config.checkpoint_interval, config.watermark_window
        self._view = 0
        self._in_vc = False
        self._attempts = 0                 # consecutive view changes without a delivered block
        self._ld = last_executed           # last height delivered (Commit emitted, or executed before)
        self._executed = last_executed
        self._stable: tuple[int, bytes, tuple] = (0, b"", ())
        self._slots: dict[int, Slot] = {}
        self._my_votes: dict[tuple[str, int, int], tuple[bytes, bytes, int]] = {}  # (kind, v, h) -> (digest, wire, tick)
        self._vcs: dict[int, m.Message] = {}     # newest valid VIEW-CHANGE per member
        self._my_vc: bytes | None = None
        self._nv_wire: bytes | None = None       # newest NEW-VIEW entered (forwarded to laggards)
        self._nv_view = 0
        self._top = 0                            # highest height pre-prepared in the current view
        self._cps: dict[int, dict[int, tuple[bytes, bytes]]] = {}  # checkpoint votes above stable
        self._cp_heights: dict[int, list[int]] = {}
        self._my_cp: bytes | None = None
        self._my_cp_height = 0
        self._work = 0
        self._requested: set[int] = set()
        self._peers: dict[int, tuple] = {}       # member -> its last STATUS body
        self._served: dict[int, tuple[int, int]] = {}  # member -> (tick, large answers sent in it)
        self._costly: dict[int, tuple[tuple[int, int], int]] = {}  # member -> ((tick, view), costly checks)
        self._seen: dict[tuple, tuple[bytes, bytes]] = {}
        self._seen_by: Counter[int] = Counter()  # entries of _seen per member: each gets 1/n of the cap
        self._reported: set[tuple] = set()
        self._evidence_by: Counter[int] = Counter()  # reports per offender since the last stable checkpoint
        self._transfer: int | None = None        # target of an outstanding state transfer
        self._progress_timer: tuple | None = None
        self._vc_timer: tuple | None = None
        self._ticks = 0
        self._stuck_ticks = 0
        self._ld_at_tick = last_executed
        self._quiet = False
        self._out: list = []
        self._handlers = {m.PREPREPARE: self._on_preprepare, m.PREPARE: self._on_prepare,
                          m.COMMIT: self._on_commit, m.CHECKPOINT: self._on_checkpoint,
                          m.VIEWCHANGE: self._on_view_change, m.NEWVIEW: self._on_new_view,
                          m.STATUS: self._on_status, m.FETCH: self._on_fetch, m.PAYLOAD: self._on_payload,
                          m.DECIDED: self._on_decided, m.COMPLAIN: self._on_complain}
        self._init_fairness()
        self._restore(wal)

    # ---- read-only view for the runtime ---------------------------------------------------------------

    @property
    def view(self) -> int:
        return self._view

    @property
    def primary(self) -> int:
        return self.config.primary(self._view)

    @property
    def is_primary(self) -> bool:
        return self.primary == self.id

    @property
    def in_view_change(self) -> bool:
        return self._in_vc

    @property
    def last_committed(self) -> int:
        """Highest height delivered to the node (Commit emitted, or executed before start/state transfer)."""
        return self._ld

    @property
    def highest_proposed(self) -> int:
        """Highest height pre-prepared in the current view. A proposal requested below it fills a gap left by
        a view change and must be answered even if empty; above it the node may wait for transactions."""
        return self._top

    @property
    def stable_checkpoint(self) -> int:
        """Low watermark: the newest checkpoint height with 2f+1 matching signatures."""
        return self._stable[0]

    @property
    def high_watermark(self) -> int:
        return self._stable[0] + self._L

    @property
    def state_transfer_pending(self) -> int | None:
        return self._transfer

    # ---- entry points ------------------------------------------------------------------------------------

    def start(self) -> list:
        self._out = []
        try:
            self._emit(SetTimer(TICK, self.config.retransmit_interval))
            if self._in_vc:
                self._broadcast_view_change()
            else:
                for (_kind, v, h), (_d, wire, _t) in sorted(self._my_votes.items()):
                    if v == self._view and h > self._ld:
                        self._emit(Broadcast(wire))
            self._broadcast_status()
            if self._ld < self._stable[0]:
                self._request_transfer(self._stable[0], tuple(i for i, _ in self._stable[2] if i != self.id))
            self._arm_progress()
            self._maybe_propose()
        except Exception:  # pragma: no cover - a bug; counted so the simulator reports it
            self.stats["internal_error"] += 1
        out, self._out = self._out, []
        return out

    def handle(self, event) -> list:
        self._out = []
        try:
            t = type(event)
            if t is MessageReceived:
                self._on_message(event.sender, event.data)
            elif t is TimerFired:
                self._on_timer(event.timer)
            elif t is ProposalReady:
                self._on_proposal(event.height, event.payload)
            elif t is WorkPending:
                self._on_work(event.count)
                self._on_oldest(event.oldest, event.oldest_age)
            elif t is Executed:
                self._on_executed(event.height, event.state_digest)
            elif t is StateTransferred:
                self._on_transferred(event.height, event.state_digest)
            else:
                self._drop("unknown_event")
        except Exception:  # a bug: never let it escape into the runtime; counted so tests and the sim see it
            self.stats["internal_error"] += 1
        out, self._out = self._out, []
        return out

    # ---- helpers ----------------------------------------------------------------------------------------

    def _emit(self, action) -> None:
        self._out.append(action)

    def _drop(self, reason: str) -> None:
        self.stats["dropped"] += 1
        self.stats["drop_" + reason] += 1

    def _sign(self, kind: int, body: tuple) -> m.Message:
        return m.sign(self.crypto, self._chain, kind, self.id, body)

    def _slot(self, h: int) -> Slot:
        s = self._slots.get(h)
        if s is None:
            s = self._slots[h] = Slot(h)
        return s

    def _digest(self, payload: bytes) -> bytes | None:
        try:
            d = self.app.digest(payload)
        except Exception:
            self.stats["app_error"] += 1
            return None
        return d if type(d) is bytes else None

    def _valid(self, h: int, payload: bytes) -> bool:
        try:
            return bool(self.app.validate(h, payload))
        except Exception:
            self.stats["app_error"] += 1
            return False

    def _in_window(self, h: int) -> bool:
        if h <= self._ld or h <= self._stable[0]:
            self._drop("stale_height")
            return False
        if h > self._stable[0] + self._L:
            self._drop("above_window")
            return False
        return True

    def _cert_valid(self, cert: Certificate) -> bool:
        signed = commit_signing_bytes(self._chain, cert.view, cert.height, cert.digest)
        return quorum_valid(self.crypto, self._n, self._q, cert.signatures, signed)

    def _note_vote(self, kind: str, member: int, v: int, h: int, d: bytes, sig: bytes) -> None:
        """Remember one signed vote per (member, view, height); a second, different one is evidence."""
        if h <= self._stable[0] or h > self._stable[0] + 2 * self._L:
            return
        key = (kind, member, v, h)
        prev = self._seen.get(key)
        if prev is None:
            if self._seen_by[member] < _SEEN_CAP // self._n:  # one member cannot fill others' share
                self._seen[key] = (d, sig)
                self._seen_by[member] += 1
            return
        if prev[0] != d and key not in self._reported:
            self._reported.add(key)
            self.stats["equivocation"] += 1
            # One proof convicts a member; more only cost every honest node a tx to sign, gossip, verify and
            # execute. A member flooding conflicting votes at every height of every view would otherwise
            # make each honest replica report it once per (view, height): tens of evidence txs per height
            # that crowd the mempool and starve consensus (issue 9). So: EVIDENCE_PER_CHECKPOINT reports per
            # offender per stable checkpoint; the equivocation is still counted.
            if self._evidence_by[member] >= EVIDENCE_PER_CHECKPOINT:
                self.stats["evidence_suppressed"] += 1
                return
            self._evidence_by[member] += 1
            self._emit(ReportEvidence(encode_evidence(kind, self._chain, member, v, h, prev, (d, sig))))

    def _futile_vote(self, msg: m.Message) -> str | None:
        """Why a PREPARE or COMMIT (sender already authenticated by the transport) can change nothing, so its
        signature, the costliest step of handling it, need not be checked; None if it must be checked.

        Votes outside the views they may count in are dropped after the check anyway, and a member's second
        vote for one (kind, view, height) is never counted (Slot.voters): it only matters as evidence, and
        only while this replica would still report the member. A member flooding votes for random digests
        and future views then costs one signature check per (kind, view, height), not one per message."""
        v, h, d = msg.body
        if msg.kind == m.PREPARE:
            if v != self._view:
                return "stale_view" if v < self._view else "future_view"
            kind = "prepare"
        else:
            if v > self._view + self._n:
                return "future_view"
            kind = "commit"
        key = (kind, msg.sender, v, h)
        prev = self._seen.get(key)
        if prev is None:
            return None
        if prev[0] == d:
            return "duplicate"
        if key in self._reported or self._evidence_by[msg.sender] >= EVIDENCE_PER_CHECKPOINT:
            return "equivocating_vote"
        return None

    # ---- messages ---------------------------------------------------------------------------------------

    def _on_message(self, sender, data) -> None:
        if type(sender) is not int or not 0 <= sender < self._n or sender == self.id:
            return self._drop("bad_sender")
        if type(data) is not bytes:
            return self._drop("malformed")
        if len(data) > self.config.max_message_bytes + 4096:
            return self._drop("oversized")
        try:
            msg = m.decode_cached(data, self._n, self.config.max_message_bytes, self._L)
        except m.DecodeError:
            return self._drop("malformed")
        if msg.sender != sender and msg.kind != m.NEWVIEW:  # a NEW-VIEW may be forwarded by anyone
            return self._drop("sender_mismatch")
        if msg.kind == m.PREPARE or msg.kind == m.COMMIT:
            futile = self._futile_vote(msg)
            if futile == "duplicate":  # a retransmission, as counted after a signature check
                self.stats["duplicate"] += 1
                return None
            if futile is not None:
                return self._drop(futile)
        if not m.verify(self.crypto, self._chain, msg):
            return self._drop("bad_signature")
        self.stats["received"] += 1
        self._handlers[msg.kind](msg, sender, data)

    def _voting_slot(self, kind: str, msg: m.Message, v: int, h: int, d: bytes) -> Slot | None:
        """The slot a vote for height h counts in, after noting the vote for equivocation checks; None when
        h is outside the watermarks or already committed (the vote then changes nothing)."""
        if not self._in_window(h):
            return None
        self._note_vote(kind, msg.sender, v, h, d, msg.sig)
        slot = self._slot(h)
        if slot.cert is not None:
            self._drop("already_committed")
            return None
        return slot

    def _on_preprepare(self, msg: m.Message, sender: int, data: bytes) -> None:
        v, h, d, payload = msg.body
        if msg.sender != self.config.primary(v):
            return self._drop("not_primary")
        if v != self._view:
            return self._drop("stale_view" if v < self._view else "future_view")
        slot = self._voting_slot("prepare", msg, v, h, d)
        if slot is None:
            return
        if slot.pp is not None and slot.pp[0] == v:
            if slot.pp[1] != d:
                return self._drop("conflicting_preprepare")
            self.stats["duplicate"] += 1
            if payload is not None and d not in slot.payloads and self._digest(payload) == d:
                slot.payloads[d] = payload
                self._deliver()
            return
        if slot.pending is not None and slot.pending[0] == v and slot.pending[1] != d:
            return self._drop("conflicting_preprepare")
        self._add_vote(slot, v, d, msg.sender, msg.sig)
        if payload is None:
            payload = slot.payloads.get(d)
        if payload is None:
            slot.pending = (v, d)
            self._fetch(slot, d, to=msg.sender)
            return
        self._accept_proposal(slot, v, d, payload)

    def _accept_proposal(self, slot: Slot, v: int, d: bytes, payload: bytes) -> None:
        if self._digest(payload) != d:
            return self._drop("bad_digest")
        if not self._valid(slot.height, payload):
            return self._drop("invalid_proposal")
        slot.payloads[d] = payload
        slot.pp, slot.nv = (v, d), None
        slot.pending = None
        if not self._in_vc:
            self._vote_prepare(slot, v, d, payload)
        self._check_prepared(slot, v, d)
        self._arm_progress()
        self._deliver()

    def _vote_prepare(self, slot: Slot, v: int, d: bytes, payload: bytes | None) -> None:
        key = ("p", v, slot.height)
        mine = self._my_votes.get(key)
        if mine is not None:
            if mine[0] != d:
                self.stats["refused_double_vote"] += 1
            return
        self._emit(Persist(walrec.vote_record(v, slot.height, d, payload)))
        msg = self._sign(m.PREPARE, (v, slot.height, d))
        wire = msg.encode()
        self._my_votes[key] = (d, wire, self._ticks)
        self._emit(Broadcast(wire))
        self._add_vote(slot, v, d, self.id, msg.sig)

    def _add_vote(self, slot: Slot, v: int, d: bytes, member: int, sig: bytes) -> bool:
        return self._add(slot, "p", v, d, member, sig)

    def _add(self, slot: Slot, kind: str, v: int, d: bytes, member: int, sig: bytes) -> bool:
        """Count one member's vote. Bounded by member, not by digest: a member has at most one vote per kind,
        view and height (a second, different one was already turned into evidence by _note_vote and is not
        a table entry), and only its VOTE_VIEWS newest views are kept. So whatever one member sends, it
        holds at most VOTE_VIEWS entries per kind and height and can never crowd out another member's vote.
        Honest members vote in ascending views, so dropping a member's oldest view loses nothing it needs."""
        table = slot.prepares if kind == "p" else slot.commits
        mine = slot.voters.setdefault((kind, member), {})
        prev = mine.get(v)
        if prev is not None:
            if prev != d:
                self._drop("equivocating_vote")
            else:
                self.stats["duplicate"] += 1
            return False
        if len(mine) >= VOTE_VIEWS:
            oldest = min(mine)
            if oldest > v:
                self._drop("old_view_vote")
                return False
            od = mine.pop(oldest)
            votes = table.get((oldest, od))
            if votes is not None:
                votes.pop(member, None)
                if not votes:
                    del table[(oldest, od)]
        mine[v] = d
        table.setdefault((v, d), {})[member] = sig
        assert len(mine) <= VOTE_VIEWS
        return True

    def _check_prepared(self, slot: Slot, v: int, d: bytes) -> None:
        votes = slot.prepares.get((v, d))
        if not votes or len(votes) < self._q:
            return
        if slot.prepared is None or slot.prepared[0] < v:
            slot.prepared = (v, d, tuple(sorted(votes.items())))
        # Commit only what this replica accepted itself: a validated pre-prepare, or a NEW-VIEW assignment
        # (prepared by 2f+1 in an earlier view, so validated by f+1 honest members). 2f+1 prepare signatures
        # alone must not make it commit a block its own validation refused or never saw.
        if (v == self._view and not self._in_vc and slot.prepared[0] == v and slot.prepared[1] == d
                and self._accepted(slot, v, d)):
            self._vote_commit(slot, v, d)

    def _accepted(self, slot: Slot, v: int, d: bytes) -> bool:
        """This replica accepted d as view v's proposal at the slot's height and voted for it: its own
        PRE-PREPARE or PREPARE for (v, h, d), or the NEW-VIEW of view v assigned it (the assignment counts
        as the vote; after a restart the PREPARE itself may be in a torn WAL record). Accepting a pre-prepare
        without voting (it arrived in a view change) is not enough: that vote is cast on entering the view."""
        if slot.pp != (v, d):
            return False
        mine = self._my_votes.get(("p", v, slot.height))
        return (mine is not None and mine[0] == d) or slot.nv == v

    def _vote_commit(self, slot: Slot, v: int, d: bytes) -> None:
        key = ("c", v, slot.height)
        if key in self._my_votes:
            return
        assert self._accepted(slot, v, d) and slot.prepared is not None and slot.prepared[:2] == (v, d)
        self._emit(Persist(walrec.commit_record(v, slot.height, d, slot.prepared[2])))
        msg = self._sign(m.COMMIT, (v, slot.height, d))
        wire = msg.encode()
        self._my_votes[key] = (d, wire, self._ticks)
        self._emit(Broadcast(wire))
        self._add_commit(slot, v, d, self.id, msg.sig)

    def _add_commit(self, slot: Slot, v: int, d: bytes, member: int, sig: bytes) -> None:
        if not self._add(slot, "c", v, d, member, sig):
            return
        votes = slot.commits[(v, d)]
        if len(votes) >= self._q and slot.cert is None:
            slot.cert = Certificate(slot.height, v, d, tuple(sorted(votes.items())))
            self._deliver()

    def _on_prepare(self, msg: m.Message, sender: int, data: bytes) -> None:
        v, h, d = msg.body
        if v != self._view:
            return self._drop("stale_view" if v < self._view else "future_view")
        slot = self._voting_slot("prepare", msg, v, h, d)
        if slot is not None and self._add_vote(slot, v, d, msg.sender, msg.sig):
            self._check_prepared(slot, v, d)

    def _on_commit(self, msg: m.Message, sender: int, data: bytes) -> None:
        v, h, d = msg.body
        if v > self._view + self._n:  # a certificate is valid in any view; one rotation ahead is plenty
            return self._drop("future_view")
        slot = self._voting_slot("commit", msg, v, h, d)
        if slot is not None:
            self._add_commit(slot, v, d, msg.sender, msg.sig)

    # ---- checkpoints and garbage collection -----------------------------------------------------------------

    def _on_executed(self, h, sd) -> None:
        if type(h) is not int or h < 0 or type(sd) is not bytes or not sd or len(sd) > m.MAX_DIGEST:
            return self._drop("bad_event")
        self._executed = max(self._executed, h)
        if h % self._K == 0 and h > self._stable[0]:
            self._send_checkpoint(h, sd)

    def _send_checkpoint(self, h: int, sd: bytes) -> None:
        msg = self._sign(m.CHECKPOINT, (h, sd))
        self._my_cp = msg.encode()
        self._my_cp_height = h
        self._emit(Broadcast(self._my_cp))
        self._add_checkpoint(self.id, h, sd, msg.sig)

    def _on_checkpoint(self, msg: m.Message, sender: int, data: bytes) -> None:
        h, sd = msg.body
        if h % self._K or h == 0:
            return self._drop("bad_checkpoint")
        if h <= self._stable[0]:
            return self._drop("stale_checkpoint")
        self._note_vote("checkpoint", msg.sender, 0, h, sd, msg.sig)
        self._add_checkpoint(msg.sender, h, sd, msg.sig)

    def _add_checkpoint(self, member: int, h: int, sd: bytes, sig: bytes) -> None:
        votes = self._cps.setdefault(h, {})
        if member in votes:
            self.stats["duplicate"] += 1
            return
        votes[member] = (sd, sig)
        hs = self._cp_heights.setdefault(member, [])
        hs.append(h)
        hs.sort()
        while len(hs) > CP_PER_MEMBER:  # each member's newest checkpoints only: bounded, and enough to match
            old = hs.pop(0)
            held = self._cps.get(old)
            if held is not None:
                held.pop(member, None)
                if not held:  # an empty height entry is state too: a member sending ever-higher heights
                    del self._cps[old]
        if member not in self._cps.get(h, {}):
            return  # h itself was the member's oldest
        votes = self._cps[h]
        assert len(self._cps) <= CP_PER_MEMBER * self._n
        matching = tuple(sorted((i, s) for i, (x, s) in votes.items() if x == sd))
        if len(matching) >= self._q:
            self._new_stable(h, sd, matching)

    def _new_stable(self, h: int, sd: bytes, proof: tuple) -> None:
        if h <= self._stable[0]:
            return
        self._deliver()  # deliver what we hold before it is collected
        self._emit(Persist(walrec.stable_record(h, sd, proof)))
        self._stable = (h, sd, proof)
        self.stats["stable_checkpoints"] += 1
        for x in [x for x in self._slots if x <= h]:
            del self._slots[x]
        for key in [k for k in self._my_votes if k[2] <= h]:
            del self._my_votes[key]
        for key in [k for k in self._seen if k[3] <= h]:
            del self._seen[key]
            self._seen_by[key[1]] -= 1
        self._reported = {k for k in self._reported if k[3] > h}
        self._evidence_by.clear()
        for x in [x for x in self._cps if x <= h]:
            del self._cps[x]
        for hs in self._cp_heights.values():
            hs[:] = [x for x in hs if x > h]
        if self._ld < h and self._transfer is None:
            self._request_transfer(h, tuple(i for i, _ in proof if i != self.id))
        self._maybe_propose()

    # ---- proposing ----------------------------------------------------------------------------------------

    def _on_work(self, count) -> None:
        if type(count) is not int or count < 0:
            return self._drop("bad_event")
        self._work = count
        self._maybe_propose()
        self._arm_progress()

    def _maybe_propose(self) -> None:
        if (self._in_vc or self.config.primary(self._view) != self.id or self._transfer is not None
                or self._quiet):
            return
        low = max(self._ld, self._stable[0])
        high = self._stable[0] + self._L
        free, in_flight = [], 0
        for h in range(low + 1, high + 1):
            slot = self._slots.get(h)
            if h in self._requested or (slot is not None and (
                    slot.cert is not None or (slot.pp is not None and slot.pp[0] == self._view))):
                in_flight += 1
            elif h < self._top:  # a gap left by the view change must be filled, whatever the pipeline
                self._request(h)
            elif len(free) < self.config.pipeline:
                free.append(h)
        for h in free:
            if in_flight >= self.config.pipeline or self._work <= 0:
                break
            self._request(h)
            in_flight += 1

    def _request(self, h: int) -> None:
        self._requested.add(h)
        self._emit(RequestProposal(h))

    def _on_proposal(self, h, payload) -> None:
        if type(h) is not int or type(payload) is not bytes:
            return self._drop("bad_event")
        if h not in self._requested:
            return self._drop("unrequested_proposal")
        self._requested.discard(h)
        v = self._view
        slot = self._slots.get(h)
        if (self._in_vc or self.config.primary(v) != self.id or h <= self._ld or h <= self._stable[0]
                or h > self._stable[0] + self._L or ("p", v, h) in self._my_votes
                or (slot is not None and (slot.cert is not None or (slot.pp is not None and slot.pp[0] == v)))):
            return self._drop("stale_proposal")
        d = self._digest(payload)
        if d is None or not 1 <= len(d) <= m.MAX_DIGEST:
            return self._drop("bad_digest")
        self._emit(Persist(walrec.vote_record(v, h, d, payload)))
        msg = self._sign(m.PREPREPARE, (v, h, d, payload))
        self._my_votes[("p", v, h)] = (d, m.encode(m.PREPREPARE, self.id, (v, h, d, None), msg.sig), self._ticks)
        slot = self._slot(h)
        slot.pp, slot.nv = (v, d), None
        slot.payloads[d] = payload
        self._top = max(self._top, h)
        self.stats["proposed"] += 1
        self._emit(Broadcast(msg.encode()))
        self._add_vote(slot, v, d, self.id, msg.sig)
        self._check_prepared(slot, v, d)
        self._maybe_propose()

    # ---- timers and progress ------------------------------------------------------------------------------

    def _backoff(self, base: float, k: int) -> float:
        return min(base * (2 ** max(0, min(k, self.config.max_backoff))), max(base, self.config.max_timeout))

    def _has_inflight(self) -> bool:
        return any(h > self._ld and (s.pp is not None or s.pending is not None or s.cert is not None)
                   for h, s in self._slots.items())

    def _arm_progress(self) -> None:
        if self._in_vc or self.config.primary(self._view) == self.id or self._progress_timer is not None:
            return
        if self._work > 0 or self._has_inflight():
            self._progress_timer = ("progress", self._view)
            self._emit(SetTimer(self._progress_timer,
                                self._backoff(self.config.progress_timeout, self._attempts)))

    def _cancel_progress(self) -> None:
        if self._progress_timer is not None:
            self._emit(CancelTimer(self._progress_timer))
            self._progress_timer = None

    def _on_progress(self) -> None:
        if not self._in_vc:
            self._attempts = 0
        self._cancel_progress()
        self._arm_progress()
        self._maybe_propose()

    def _on_timer(self, timer) -> None:
        if timer == TICK:
            return self._tick()
        if timer == TRANSFER:
            if self._transfer is not None:  # the node did not answer: resume and ask again if still behind
                self._transfer = None
                self.stats["state_transfer_timeout"] += 1
                self._deliver()
                if self._ld < self._stable[0]:
                    self._request_transfer(self._stable[0], tuple(i for i, _ in self._stable[2] if i != self.id))
            return
        if type(timer) is tuple and len(timer) == 2 and timer[0] == "progress":
            if timer != self._progress_timer:
                return self._drop("stale_timer")
            self._progress_timer = None
            if self._in_vc or self.config.primary(self._view) == self.id:
                return
            if self._work > 0 or self._has_inflight():
                self.stats["progress_timeout"] += 1
                self._start_view_change(self._view + 1)
            return
        if type(timer) is tuple and len(timer) == 2 and timer[0] == "request":
            return self._on_request_timer(timer)
        if type(timer) is tuple and len(timer) == 2 and timer[0] == "vc":
            if timer != self._vc_timer:
                return self._drop("stale_timer")
            self._vc_timer = None
            if self._in_vc and timer[1] == self._view:
                self.stats["view_change_timeout"] += 1
                self._start_view_change(self._view + 1)
            return
        self._drop("unknown_timer")

    def _broadcast_status(self) -> None:
        body = (self._view, self._in_vc, self._ld, self._stable[0])
        self._emit(Broadcast(self._sign(m.STATUS, body).encode()))

    def _tick(self) -> None:
        """Retransmission: lost or duplicated messages never stall the protocol for good."""
        self._ticks += 1
        self._emit(SetTimer(TICK, self.config.retransmit_interval))
        self._broadcast_status()
        self._fairness_tick()
        if self._in_vc:
            if self._my_vc is not None:
                self._emit(Broadcast(self._my_vc))
        else:
            for (_kind, v, h), (_d, wire, tick) in sorted(self._my_votes.items(), key=lambda kv: kv[0][2]):
                slot = self._slots.get(h)
                # only votes that have been out for a full interval: the usual in-flight ones are not lost
                if (v == self._view and h > self._ld and tick < self._ticks - 1
                        and (slot is None or slot.cert is None)):
                    self._emit(Broadcast(wire))
            for slot in self._slots.values():
                if slot.pending is not None and slot.pending[0] == self._view:
                    self._fetch(slot, slot.pending[1], to=self.config.primary(self._view))
        slot = self._slots.get(self._ld + 1)
        if slot is not None and slot.cert is not None and slot.cert.digest not in slot.payloads:
            self._fetch(slot, slot.cert.digest)
        # Fallback catch-up: f+1 members claim more blocks than we have and nothing arrived for 3 ticks.
        if self._ld != self._ld_at_tick:
            self._ld_at_tick, self._stuck_ticks = self._ld, 0
        else:
            self._stuck_ticks += 1
        if self._transfer is None and self._stuck_ticks >= 3:
            claims = sorted(((st[2], i) for i, st in self._peers.items()), reverse=True)
            if len(claims) > self._f and claims[self._f][0] > self._ld:
                target = claims[self._f][0]
                self._stuck_ticks = 0
                self._request_transfer(target, tuple(i for c, i in claims if c >= target))

    # ---- restart from the WAL -------------------------------------------------------------------------------

    def _restore(self, records) -> None:
        view, in_vc, nv_wire = 0, False, None
        votes, commits = [], []
        for rec in records:
            try:
                r = walrec.decode(rec)
            except (walrec.WalError, TypeError):
                self.stats["bad_wal_record"] += 1
                continue
            tag = r[0]
            if tag == "view" and r[1] > view:
                view, in_vc = r[1], True
            elif tag == "newview" and r[1] >= view:
                view, in_vc, nv_wire, self._nv_view = r[1], False, r[2], r[1]
            elif tag == "vote":
                votes.append(r)
            elif tag == "commit":
                commits.append(r)
            elif tag == "stable" and r[1] > self._stable[0]:
                self._stable = (r[1], r[2], r[3])
        self._view, self._in_vc, self._nv_wire = view, in_vc, nv_wire
        sh = self._stable[0]
        for _tag, v, h, d, payload in votes:
            if h <= sh:
                continue
            if self.config.primary(v) == self.id:
                sig = self._sign(m.PREPREPARE, (v, h, d, None)).sig
                wire = m.encode(m.PREPREPARE, self.id, (v, h, d, None), sig)
            else:
                msg = self._sign(m.PREPARE, (v, h, d))
                sig, wire = msg.sig, msg.encode()
            self._my_votes[("p", v, h)] = (d, wire, -1)
            slot = self._slot(h)
            if payload is not None:
                slot.payloads[d] = payload
            if v == view and not in_vc:
                slot.pp, slot.nv = (v, d), None
                self._top = max(self._top, h) if self.config.primary(v) == self.id else self._top
            self._add_vote(slot, v, d, self.id, sig)
        for _tag, v, h, d, proof in commits:
            if h <= sh:
                continue
            msg = self._sign(m.COMMIT, (v, h, d))
            self._my_votes[("c", v, h)] = (d, msg.encode(), -1)
            slot = self._slot(h)
            if slot.prepared is None or slot.prepared[0] < v:
                slot.prepared = (v, d, proof)
            self._add(slot, "c", v, d, self.id, msg.sig)
        if nv_wire is not None:
            try:
                nv = m.decode(nv_wire, self._n, self.config.max_message_bytes, self._L)
                if nv.kind == m.NEWVIEW and nv.body[0] == view:
                    top = self._top
                    self._apply_assignments(view, nv.body[2], send=False)
                    self._top = max(top, self._top)
            except m.DecodeError:
                self.stats["bad_wal_record"] += 1
        self._out = []
