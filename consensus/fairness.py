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

THROUGHPUT_VIEWS = 4  # the floor is relative to the best rate of this many previous views


class Fairness:
    """A mixin of Replica: all state lives on the replica (initialised by _init_fairness)."""

    def _init_fairness(self) -> None:
        self._req_id = b""                   # oldest pending tx the node reported (b"": none)
        self._req_timer: tuple | None = None
        self._req_id_at_tick = b""
        self._complaints: dict[int, int] = {}  # member -> view of its latest complaint
        self._complained_view = -1
        self._my_complaint: bytes | None = None
        self._tp_bytes = 0                   # payload bytes delivered since the last tick
        self._tp: deque[int] = deque(maxlen=self.config.throughput_window)
        self._tp_best = 0.0                  # best windowed rate of the current view
        self._tp_history: deque[float] = deque(maxlen=THROUGHPUT_VIEWS)

    def _on_oldest(self, oldest, age) -> None:
        if type(oldest) is not bytes or len(oldest) > m.MAX_DIGEST or type(age) not in (int, float) \
                or not math.isfinite(age) or age < 0:
            return self._drop("bad_event")
        if oldest == self._req_id:
            return  # the same tx: its timer keeps running
        self._req_id = oldest
        self._cancel_request_timer()
        if oldest:
            self._arm_request_timer(max(0.0, self.config.request_timeout - age))

    def _arm_request_timer(self, seconds: float) -> None:
        self._req_timer = ("request", self._view)
        self._emit(SetTimer(self._req_timer, seconds))

    def _cancel_request_timer(self) -> None:
        if self._req_timer is not None:
            self._emit(CancelTimer(self._req_timer))
            self._req_timer = None

    def _on_request_timer(self, timer) -> None:
        if timer != self._req_timer:
            return self._drop("stale_timer")
        self._req_timer = None
        if self._req_id and not self._in_vc and self.config.primary(self._view) != self.id:
            self.stats["request_timeout"] += 1
            self._complain()

    def _fairness_new_view(self) -> None:
        """Entering a view: the new primary gets the full request bound and a fresh throughput window."""
        self._cancel_request_timer()
        if self._req_id:
            self._arm_request_timer(self.config.request_timeout)
        if self._tp_best > 0:
            self._tp_history.append(self._tp_best)
        self._tp_best = 0.0
        self._tp.clear()
        self._complaints = {i: v for i, v in self._complaints.items() if v >= self._view}

    def _fairness_tick(self) -> None:
        delivered, self._tp_bytes = self._tp_bytes, 0
        busy = bool(self._req_id) and self._req_id == self._req_id_at_tick and not self._in_vc
        self._req_id_at_tick = self._req_id
        if busy:
            self._tp.append(delivered)
            if len(self._tp) == self._tp.maxlen:
                rate = sum(self._tp) / len(self._tp)
                self._tp_best = max(self._tp_best, rate)
                best = max(self._tp_history, default=0.0)
                if rate < best * self.config.throughput_floor and self.config.primary(self._view) != self.id:
                    self.stats["throughput_floor"] += 1
                    self._complain()
        if not self._in_vc and self._complained_view == self._view and self._my_complaint is not None:
            self._emit(Broadcast(self._my_complaint))  # lost complaints would otherwise never count

    def _complain(self) -> None:
        if self._in_vc or self._complained_view == self._view:
            return
        self._complained_view = self._view
        msg = self._sign(m.COMPLAIN, (self._view,))
        self._my_complaint = msg.encode()
        self.stats["complaints_sent"] += 1
        self._emit(Broadcast(self._my_complaint))
        self._complaints[self.id] = self._view
        self._check_complaints()

    def _on_complain(self, msg: m.Message, sender: int, data: bytes) -> None:
        (v,) = msg.body
        if v != self._view or self._in_vc:
            return self._drop("stale_complaint")
        if self._complaints.get(msg.sender) == v:
            self.stats["duplicate"] += 1
            return
        self._complaints[msg.sender] = v
        self._check_complaints()

    def _check_complaints(self) -> None:
        if self._in_vc:
            return
        count = sum(1 for v in self._complaints.values() if v == self._view)
        assert len(self._complaints) <= self._n
        if count > self._f:  # at least one honest member waited too long
            self.stats["complaint_view_changes"] += 1
            self._start_view_change(self._view + 1)
