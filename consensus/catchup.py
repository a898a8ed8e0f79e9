"""Catching up: status gossip, answering payload fetches, pushing committed blocks to lagging peers, and
state transfer when this replica is too far behind to catch up through consensus messages.

A component of Replica with its own state: what each peer last reported (STATUS), the answer budget per
peer and tick, the outstanding state transfer, and the stuck-replica detector. It calls back only
Replica.emit/drop/sign/slot/digest/cert_valid/deliver/accept_proposal/transferred/send_checkpoint, reads
the replica's view, phase, slots, last committed height, stable checkpoint and ticks, and asks the view
changes for the NEW-VIEW to forward (ViewChanges.new_view_for)."""

from __future__ import annotations

from . import messages as m
from .actions import CancelTimer, RequestStateTransfer, Send, SetTimer
from .certificate import Certificate, CertificateError
from .invariants import InvariantViolation

TRANSFER = ("transfer",)


class CatchUp:
    __slots__ = ("replica", "config", "peer_status", "served", "transfer_target", "stuck_ticks",
                 "committed_at_last_tick")

    def __init__(self, replica, last_executed: int) -> None:
        self.replica = replica
        self.config = replica.config
        self.peer_status: dict[int, m.Status] = {}  # member -> its last STATUS
        self.served: dict[int, tuple[int, int]] = {}  # member -> (tick, large answers sent in it)
        self.transfer_target: int | None = None       # target of an outstanding state transfer
        self.stuck_ticks = 0
        self.committed_at_last_tick = last_executed

    def peer_views(self) -> list[int]:
        return [st.view for st in self.peer_status.values()]

    def budget(self, sender: int) -> bool:
        """Large answers (payloads, pushed blocks, NEW-VIEW forwards) per peer and tick are bounded: a peer
        asking in a loop cannot make this replica send megabytes per message it sends."""
        r = self.replica
        tick, used = self.served.get(sender, (r.ticks, 0))
        if tick != r.ticks:
            used = 0
        if used >= 2 * (self.config.pipeline + self.config.catchup_batch):
            r.drop("rate_limited")
            return False
        self.served[sender] = (r.ticks, used + 1)
        return True

    # ---- messages -----------------------------------------------------------------------------------------

    def on_fetch(self, msg: m.Message, sender: int, data: bytes) -> None:
        r = self.replica
        fetch: m.Fetch = msg.body
        if not self.budget(sender):
            return
        slot = r.slots.get(fetch.height)
        if slot is None or fetch.digest not in slot.payloads:
            return r.drop("fetch_miss")
        answer = m.Payload(fetch.height, fetch.digest, slot.payloads[fetch.digest])
        r.emit(Send(sender, r.sign(m.PAYLOAD, answer).encode()))

    def on_payload(self, msg: m.Message, sender: int, data: bytes) -> None:
        r = self.replica
        h, d, payload = msg.body.height, msg.body.digest, msg.body.payload
        slot = r.slots.get(h)
        if h <= r.last_committed or slot is None:
            return r.drop("unsolicited_payload")
        if d in slot.payloads:
            r.stats["duplicate"] += 1
            return
        if d not in slot.known_digests():
            return r.drop("unsolicited_payload")
        if r.digest(payload) != d:
            return r.drop("bad_digest")
        if slot.certificate is not None and slot.certificate.digest == d:
            # decided by 2f+1 (so validated by f+1 honest members): delivered as it is, not validated again
            # against this replica's clock, which a payload that arrives late could fail
            slot.payloads[d] = payload
            slot.pending = None
            r.deliver()
            return
        if slot.pending is not None and slot.pending == (r.view, d):
            return r.accept_proposal(slot, r.view, d, payload)
        slot.payloads[d] = payload
        r.deliver()

    def on_decided(self, msg: m.Message, sender: int, data: bytes) -> None:
        r = self.replica
        h, payload = msg.body.height, msg.body.payload
        if h <= r.last_committed or h <= r.stable.height:
            return r.drop("stale_height")
        if h > r.last_committed + r.window:
            return r.drop("above_window")
        try:
            cert = Certificate.decode(msg.body.certificate)
        except CertificateError:
            return r.drop("bad_certificate")
        if cert.height != h or not r.cert_valid(cert):
            return r.drop("bad_certificate")
        if r.digest(payload) != cert.digest:
            return r.drop("bad_digest")
        slot = r.slot(h)
        if slot.certificate is not None and slot.certificate.digest != cert.digest:  # needs more than f faulty
            r.stats["conflicting_certificate"] += 1
            return
        if slot.certificate is None:
            slot.certificate = cert
        slot.payloads[cert.digest] = payload
        r.deliver()

    def on_status(self, msg: m.Message, sender: int, data: bytes) -> None:
        r = self.replica
        st: m.Status = msg.body
        prev = self.peer_status.get(sender)
        self.peer_status[sender] = st
        if not (len(self.peer_status) <= r.n):
            raise InvariantViolation("peer status: one per member")
        # Push committed blocks, with certificates, to a peer that is more than a pipeline behind or reported
        # the same lag twice in a row, so a peer a moment behind is not sent megabytes it will get anyway.
        behind = st.last_committed
        mine = r.last_committed
        if behind < mine and (mine - behind > self.config.pipeline
                              or (prev is not None and prev.last_committed == behind)):
            for h in range(behind + 1, min(mine, behind + self.config.catchup_batch) + 1):
                slot = r.slots.get(h)
                cert = slot.certificate if slot is not None else None
                if cert is None or cert.digest not in slot.payloads:
                    continue
                if not self.budget(sender):
                    break
                body = m.Decided(h, slot.payloads[cert.digest], cert.encode())
                r.emit(Send(sender, r.sign(m.DECIDED, body).encode()))
                r.stats["decided_sent"] += 1
        cps = r.checkpoints
        if cps.my_newest is not None and st.stable_height < cps.my_newest_height:  # to whoever lacks it
            r.emit(Send(sender, cps.my_newest))
        forward = r.view_changes.new_view_for(st.view, st.in_view_change)
        if forward is not None and self.budget(sender):
            r.emit(Send(sender, forward))

    # ---- state transfer -----------------------------------------------------------------------------------

    def request_transfer(self, target: int, peers: tuple[int, ...]) -> None:
        r = self.replica
        self.transfer_target = target
        r.stats["state_transfer"] += 1
        r.emit(RequestStateTransfer(target, peers))
        r.emit(SetTimer(TRANSFER, self.config.state_transfer_timeout))

    def request_to_stable(self) -> None:
        """Ask for the blocks up to the stable checkpoint from the members that signed it."""
        r = self.replica
        stable = r.stable
        self.request_transfer(stable.height, tuple(i for i, _ in stable.proof if i != r.id))

    def on_transferred(self, h, sd) -> None:
        r = self.replica
        if type(h) is not int or h < 0 or type(sd) is not bytes:
            return r.drop("bad_event")
        if self.transfer_target is not None:
            r.emit(CancelTimer(TRANSFER))
        self.transfer_target = None
        r.transferred(h, sd)

    def on_transfer_timeout(self) -> None:
        r = self.replica
        if self.transfer_target is not None:  # the node did not answer: resume and ask again if still behind
            self.transfer_target = None
            r.stats["state_transfer_timeout"] += 1
            r.deliver()
            if r.last_committed < r.stable.height:
                self.request_to_stable()

    def tick(self) -> None:
        """Fallback catch-up: f+1 members claim more blocks than this replica has and nothing arrived for 3
        ticks."""
        r = self.replica
        if r.last_committed != self.committed_at_last_tick:
            self.committed_at_last_tick, self.stuck_ticks = r.last_committed, 0
        else:
            self.stuck_ticks += 1
        if self.transfer_target is None and self.stuck_ticks >= 3:
            claims = sorted(((st.last_committed, i) for i, st in self.peer_status.items()), reverse=True)
            if len(claims) > r.f and claims[r.f][0] > r.last_committed:
                target = claims[r.f][0]
                self.stuck_ticks = 0
                self.request_transfer(target, tuple(i for c, i in claims if c >= target))
