"""The primary's side of the normal case: which heights to ask the node a proposal for (RequestProposal),
and turning its answers (ProposalReady) into PRE-PREPAREs.

Up to `pipeline` heights in flight while the node reports pending work; a height below the highest one
pre-prepared in this view (a gap a view change left: no proof anywhere, so never committed) is asked for
at once, work or not. Requests are forgotten on a view change (a late answer is dropped).

A component of Replica with its own state; it reads the replica's view, phase, slots, watermarks and
outstanding state transfer, and calls back only Replica.emit/drop/digest/pre_prepare."""

from __future__ import annotations

from . import messages as m
from .actions import RequestProposal


class Proposer:
    __slots__ = ("replica", "config", "requested", "highest_proposed", "pending_work", "paused")

    def __init__(self, replica) -> None:
        self.replica = replica
        self.config = replica.config
        self.requested: set[int] = set()  # heights asked of the node, not yet answered
        self.highest_proposed = 0         # highest height pre-prepared in the current view
        self.pending_work = 0             # the mempool count the node last reported
        self.paused = False               # while a NEW-VIEW's re-proposals are being put in place

    def on_work(self, count) -> None:
        r = self.replica
        if type(count) is not int or count < 0:
            return r.drop("bad_event")
        self.pending_work = count
        self.maybe_propose()
        r.arm_progress()

    def maybe_propose(self) -> None:
        # called after nearly every event: the replica's properties are read once each
        if self.paused:
            return
        r = self.replica
        if r.in_view_change or not r.is_primary or r.catch_up.transfer_target is not None:
            return
        view, slots, requested = r.view, r.slots, self.requested
        stable = r.stable.height
        low = max(r.last_committed, stable)
        high = stable + r.window
        free, in_flight = [], 0
        for h in range(low + 1, high + 1):
            slot = slots.get(h)
            if h in requested or (slot is not None and (
                    slot.certificate is not None or (slot.proposal is not None and slot.proposal.view == view))):
                in_flight += 1
            elif h < self.highest_proposed:  # a gap left by the view change must be filled, whatever the pipeline
                self._request(h)
            elif len(free) < self.config.pipeline:
                free.append(h)
        for h in free:
            if in_flight >= self.config.pipeline or self.pending_work <= 0:
                break
            self._request(h)
            in_flight += 1

    def _request(self, h: int) -> None:
        self.requested.add(h)
        self.replica.emit(RequestProposal(h))

    def on_proposal(self, h, payload) -> None:
        r = self.replica
        if type(h) is not int or type(payload) is not bytes:
            return r.drop("bad_event")
        if h not in self.requested:
            return r.drop("unrequested_proposal")
        self.requested.discard(h)
        v = r.view
        slot = r.slots.get(h)
        low = r.stable.height
        if (r.in_view_change or not r.is_primary or h <= r.last_committed or h <= low
                or h > low + r.window or r.has_voted("p", v, h)
                or (slot is not None and (slot.certificate is not None
                                          or (slot.proposal is not None and slot.proposal.view == v)))):
            return r.drop("stale_proposal")
        d = r.digest(payload)
        if d is None or not 1 <= len(d) <= m.MAX_DIGEST:
            return r.drop("bad_digest")
        self.highest_proposed = max(self.highest_proposed, h)
        r.pre_prepare(v, h, d, payload)
        self.maybe_propose()
