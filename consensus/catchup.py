"""Catching up: in-order delivery, fetching missing payloads, pushing committed blocks to lagging peers,
status gossip, and state transfer. Part of Replica (a mixin: all state lives on the replica)."""

from __future__ import annotations

from . import messages as m
from .actions import Broadcast, CancelTimer, Commit, RequestStateTransfer, Send, SetTimer
from .certificate import Certificate, CertificateError
from .slot import Slot

TRANSFER = ("transfer",)


class CatchUp:
    """Delivery in height order and everything that gets a replica (or a peer) the blocks it lacks."""

    def _deliver(self) -> None:
        if self._transfer is not None:
            return
        while True:
            h = self._ld + 1
            slot = self._slots.get(h)
            if slot is None or slot.cert is None:
                return
            cert = slot.cert
            assert cert.height == h and len(cert.signatures) >= self._q
            payload = slot.payloads.get(cert.digest)
            if payload is None:
                self._fetch(slot, cert.digest)
                return
            self._ld = h
            self.stats["delivered"] += 1
            self._tp_bytes += len(payload)  # throughput floor (fairness.py)
            self._emit(Commit(h, payload, cert.digest, cert.encode()))
            self._on_progress()

    def _fetch(self, slot: Slot, d: bytes, to: int | None = None) -> None:
        if slot.fetch_tick == self._ticks:  # at most once per retransmit interval
            return
        slot.fetch_tick = self._ticks
        wire = self._sign(m.FETCH, (slot.height, d)).encode()
        self.stats["fetch_sent"] += 1
        self._emit(Send(to, wire) if to is not None else Broadcast(wire))

    def _budget(self, sender: int) -> bool:
        """Large answers (payloads, pushed blocks) per peer and tick are bounded: a peer asking in a loop
        cannot make this replica send megabytes per message it sends."""
        tick, used = self._served.get(sender, (self._ticks, 0))
        if tick != self._ticks:
            used = 0
        if used >= 2 * (self.config.pipeline + self.config.catchup_batch):
            self._drop("rate_limited")
            return False
        self._served[sender] = (self._ticks, used + 1)
        return True

    def _on_fetch(self, msg: m.Message, sender: int, data: bytes) -> None:
        h, d = msg.body
        if not self._budget(sender):
            return
        slot = self._slots.get(h)
        if slot is None or d not in slot.payloads:
            return self._drop("fetch_miss")
        self._emit(Send(sender, self._sign(m.PAYLOAD, (h, d, slot.payloads[d])).encode()))

    def _on_payload(self, msg: m.Message, sender: int, data: bytes) -> None:
        h, d, payload = msg.body
        slot = self._slots.get(h)
        if h <= self._ld or slot is None:
            return self._drop("unsolicited_payload")
        if d in slot.payloads:
            self.stats["duplicate"] += 1
            return
        if d not in slot.known_digests():
            return self._drop("unsolicited_payload")
        if self._digest(payload) != d:
            return self._drop("bad_digest")
        if slot.pending is not None and slot.pending == (self._view, d):
            return self._accept_proposal(slot, self._view, d, payload)
        slot.payloads[d] = payload
        self._deliver()

    def _on_decided(self, msg: m.Message, sender: int, data: bytes) -> None:
        h, payload, cert_bytes = msg.body
        if h <= self._ld or h <= self._stable[0]:
            return self._drop("stale_height")
        if h > self._ld + self._L:
            return self._drop("above_window")
        try:
            cert = Certificate.decode(cert_bytes)
        except CertificateError:
            return self._drop("bad_certificate")
        if cert.height != h or not self._cert_valid(cert):
            return self._drop("bad_certificate")
        if self._digest(payload) != cert.digest:
            return self._drop("bad_digest")
        slot = self._slot(h)
        if slot.cert is not None and slot.cert.digest != cert.digest:  # needs more than f faulty members
            self.stats["conflicting_certificate"] += 1
            return
        if slot.cert is None:
            slot.cert = cert
        slot.payloads[cert.digest] = payload
        self._deliver()

    def _on_status(self, msg: m.Message, sender: int, data: bytes) -> None:
        v, in_vc, ld, sh = msg.body
        prev = self._peers.get(sender)
        self._peers[sender] = msg.body
        # Push committed blocks, with certificates, to a peer that is more than a pipeline behind or reported
        # the same lag twice in a row, so a peer a moment behind is not sent megabytes it will get anyway.
        if ld < self._ld and (self._ld - ld > self.config.pipeline or (prev is not None and prev[2] == ld)):
            for h in range(ld + 1, min(self._ld, ld + self.config.catchup_batch) + 1):
                slot = self._slots.get(h)
                if slot is None or slot.cert is None or slot.cert.digest not in slot.payloads:
                    continue
                if not self._budget(sender):
                    break
                body = (h, slot.payloads[slot.cert.digest], slot.cert.encode())
                self._emit(Send(sender, self._sign(m.DECIDED, body).encode()))
                self.stats["decided_sent"] += 1
        if self._my_cp is not None and sh < self._my_cp_height:  # our newest checkpoint, to whoever lacks it
            self._emit(Send(sender, self._my_cp))
        if (self._nv_wire is not None and (v < self._nv_view or (v == self._nv_view and in_vc))
                and self._budget(sender)):
            self._emit(Send(sender, self._nv_wire))  # even from a later view change: it proves itself

    def _request_transfer(self, target: int, peers: tuple[int, ...]) -> None:
        self._transfer = target
        self.stats["state_transfer"] += 1
        self._emit(RequestStateTransfer(target, peers))
        self._emit(SetTimer(TRANSFER, self.config.state_transfer_timeout))

    def _on_transferred(self, h, sd) -> None:
        if type(h) is not int or h < 0 or type(sd) is not bytes:
            return self._drop("bad_event")
        if self._transfer is not None:
            self._emit(CancelTimer(TRANSFER))
        self._transfer = None
        if h > self._ld:
            self._ld = h
            self._on_progress()
        self._executed = max(self._executed, h)
        if h % self._K == 0 and h > self._stable[0]:
            self._send_checkpoint(h, sd)
        self._deliver()
