"""Replacing a slow or censoring primary (PBFT per-request timers, Aardvark's throughput floor).

The progress timer alone does not catch a primary that commits one block just inside every timeout, or that
leaves out one hospital's txs: something commits, so the timer keeps being reset. Two more triggers, both
turned into a signed COMPLAIN(view) that this backup broadcasts (and repeats every tick while it holds):

- **Request timer.** The node reports the oldest transaction it holds and how long it has held it
  (`WorkPending(count, oldest, oldest_age)`; consensus has no clock). A backup that has held the same tx
  for `request_timeout` complains. The timer restarts, with the full bound, in every new view.
- **Throughput floor.** A tick is *busy* when the oldest pending tx at the previous tick is still pending:
  demand exceeded what committed, so what committed measures the primary, not the load. Over the last
  `throughput_window` busy ticks of a view, payload bytes delivered per busy tick are compared with the
  best such rate of the last `THROUGHPUT_VIEWS` views; below `throughput_floor` times that, the backup
  complains. (Bytes, not blocks: a few heavy blocks are not a slow primary.)

A complaint alone changes nothing: a view change starts only once f+1 members complained in the current
view, so at least one honest replica really waited too long; one Byzantine member can never force one.
Complaints are kept latest-only per member (n entries). The primary never complains about itself.
"""

from __future__ import annotations

import math
from collections import deque

from . import messages as m
from .actions import Broadcast, CancelTimer, SetTimer
from .invariants import check

THROUGHPUT_VIEWS = 4  # the floor is relative to the best rate of this many previous views


class Fairness:
    """A component of Replica with its own state. The replica reports the oldest pending tx
    (on_oldest_request), delivered payload bytes (delivered), ticks, new views and COMPLAINs; this component
    uses the replica only for its view, phase and primary, to emit actions, and to start a view change."""

    __slots__ = ("replica", "config", "oldest_request", "request_timer", "oldest_at_last_tick", "complaints",
                 "complained_in_view", "my_complaint", "bytes_since_tick", "busy_tick_bytes", "best_rate",
                 "best_rate_history")

    def __init__(self, replica) -> None:
        self.replica = replica
        self.config = replica.config
        self.oldest_request = b""              # oldest pending tx the node reported (b"": none)
        self.request_timer: tuple | None = None
        self.oldest_at_last_tick = b""
        self.complaints: dict[int, int] = {}   # member -> view of its latest complaint
        self.complained_in_view = -1
        self.my_complaint: bytes | None = None
        self.bytes_since_tick = 0              # payload bytes delivered since the last tick
        self.busy_tick_bytes: deque[int] = deque(maxlen=self.config.throughput_window)
        self.best_rate = 0.0                   # best windowed rate of the current view
        self.best_rate_history: deque[float] = deque(maxlen=THROUGHPUT_VIEWS)

    def delivered(self, payload_bytes: int) -> None:
        self.bytes_since_tick += payload_bytes

    def on_oldest_request(self, oldest, age) -> None:
        if type(oldest) is not bytes or len(oldest) > m.MAX_DIGEST or type(age) not in (int, float) \
                or not math.isfinite(age) or age < 0:
            return self.replica.drop("bad_event")
        if oldest == self.oldest_request:
            return  # the same tx: its timer keeps running
        self.oldest_request = oldest
        self.cancel_request_timer()
        if oldest:
            self._arm_request_timer(max(0.0, self.config.request_timeout - age))

    def _arm_request_timer(self, seconds: float) -> None:
        self.request_timer = ("request", self.replica.view)
        self.replica.emit(SetTimer(self.request_timer, seconds))

    def cancel_request_timer(self) -> None:
        if self.request_timer is not None:
            self.replica.emit(CancelTimer(self.request_timer))
            self.request_timer = None

    def on_request_timer(self, timer) -> None:
        r = self.replica
        if timer != self.request_timer:
            return r.drop("stale_timer")
        self.request_timer = None
        if self.oldest_request and not r.in_view_change and not r.is_primary:
            r.stats["request_timeout"] += 1
            self._complain()

    def on_new_view(self) -> None:
        """Entering a view: the new primary gets the full request bound and a fresh throughput window."""
        self.cancel_request_timer()
        if self.oldest_request:
            self._arm_request_timer(self.config.request_timeout)
        if self.best_rate > 0:
            self.best_rate_history.append(self.best_rate)
        self.best_rate = 0.0
        self.busy_tick_bytes.clear()
        view = self.replica.view
        self.complaints = {i: v for i, v in self.complaints.items() if v >= view}

    def tick(self) -> None:
        r = self.replica
        delivered, self.bytes_since_tick = self.bytes_since_tick, 0
        in_vc = r.in_view_change
        busy = bool(self.oldest_request) and self.oldest_request == self.oldest_at_last_tick and not in_vc
        self.oldest_at_last_tick = self.oldest_request
        if busy:
            self.busy_tick_bytes.append(delivered)
            if len(self.busy_tick_bytes) == self.busy_tick_bytes.maxlen:
                rate = sum(self.busy_tick_bytes) / len(self.busy_tick_bytes)
                self.best_rate = max(self.best_rate, rate)
                best = max(self.best_rate_history, default=0.0)
                if rate < best * self.config.throughput_floor and not r.is_primary:
                    r.stats["throughput_floor"] += 1
                    self._complain()
        if not r.in_view_change and self.complained_in_view == r.view and self.my_complaint is not None:
            r.emit(Broadcast(self.my_complaint))  # lost complaints would otherwise never count

    def _complain(self) -> None:
        r = self.replica
        if r.in_view_change or self.complained_in_view == r.view:
            return
        check(not r.is_primary, "the primary never complains about itself")
        self.complained_in_view = r.view
        msg = r.sign(m.COMPLAIN, (r.view,))
        self.my_complaint = msg.encode()
        r.stats["complaints_sent"] += 1
        r.emit(Broadcast(self.my_complaint))
        self.complaints[r.id] = r.view
        self._check_complaints()

    def on_complain(self, msg: m.Message, sender: int, data: bytes) -> None:
        r = self.replica
        v = msg.body.view
        if v != r.view or r.in_view_change:
            return r.drop("stale_complaint")
        if self.complaints.get(msg.sender) == v:
            r.stats["duplicate"] += 1
            return
        self.complaints[msg.sender] = v
        self._check_complaints()

    def _check_complaints(self) -> None:
        r = self.replica
        if r.in_view_change:
            return
        count = sum(1 for v in self.complaints.values() if v == r.view)
        check(len(self.complaints) <= r.n, "complaints: one per member")
        if count > r.f:  # at least one honest member waited too long
            r.stats["complaint_view_changes"] += 1
            r.start_view_change(r.view + 1)
