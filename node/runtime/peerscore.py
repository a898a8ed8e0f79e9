"""Per-member misbehaviour scores, and the rate-limited log line that goes with them.

Every loop that handles peer input (inbox, tx gossip, block sync) reports what a member sent wrong here
instead of logging it: one log line per member per ``log_interval`` (with how many reports it stands
for), never one per item, so a member flooding garbage cannot flood the log or the disk.

The score decays exponentially (``half_life`` seconds). A member whose score reaches ``threshold`` is
*blocked* until it has decayed below half the threshold (one half-life without new reports, as nothing it
sends meanwhile is read): its tx-gossip batches are dropped unread (decoding and checking signatures is
the expensive part of a batch) and block sync does not pick it as a source. Consensus frames from a
blocked member are still handled: consensus/ bounds and checks them itself, and dropping a member's votes
on a local suspicion could cost liveness. With 20 points a malformed batch, threshold 100 and half-life
30 s, a member flooding garbage gets five batches read, then about one batch per 30 s.

Points (what an honest member never sends costs much; what a race can produce costs little or nothing):
``MALFORMED`` an undecodable frame or a tx whose encoding/signature is invalid, ``INTERNAL`` an input
that raised something other than the decoder's own error (a bug here, but caused by that input).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("radchain.peers")

MALFORMED = 20.0
BAD_TX = 5.0
INTERNAL = 50.0


@dataclass
class _Entry:
    score: float = 0.0
    at: float = 0.0  # when score was last brought up to date
    reports: int = 0  # total reports ever
    dropped: int = 0  # frames dropped unread while blocked
    blocked: bool = False  # set at the threshold, cleared below half of it (hysteresis)
    last_log: float = -math.inf
    unlogged: int = 0  # reports since the last log line
    last_what: str = ""
    kinds: dict[str, int] = field(default_factory=dict)


class PeerScores:
    def __init__(self, *, threshold: float = 100.0, half_life: float = 30.0, log_interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, names: dict[str, str] | None = None):
        self.threshold = threshold
        self.half_life = half_life
        self.log_interval = log_interval
        self.clock = clock
        self.names = names or {}  # peer id -> member name, for log lines
        self._peers: dict[str, _Entry] = {}
        self.log_lines = 0  # lines written (tests check the rate limit with it)

    def _entry(self, peer: str) -> _Entry:
        e = self._peers.get(peer)
        if e is None:
            # Only members reach here (network/ admits members only), so this dict stays n entries.
            e = self._peers[peer] = _Entry(at=self.clock())
        now = self.clock()
        if now > e.at and e.score:
            e.score *= 0.5 ** ((now - e.at) / self.half_life)
            if e.score < 0.01:
                e.score = 0.0
        e.at = now
        if e.blocked and e.score < self.threshold / 2:
            e.blocked = False
        return e

    def score(self, peer: str) -> float:
        return self._entry(peer).score

    def blocked(self, peer: str) -> bool:
        e = self._peers.get(peer)
        return e is not None and self._entry(peer).blocked

    def dropped(self, peer: str) -> None:
        """A frame from a blocked member was dropped unread (counted, not scored, not logged)."""
        self._entry(peer).dropped += 1

    def penalize(self, peer: str, points: float, what: str, detail: object = "", *,
                 exc_info: BaseException | None = None) -> None:
        """Report one bad input. ``what`` is a fixed description (it keys the per-kind counts, so it must
        not carry values the peer chose); ``detail`` goes into the log line only."""
        e = self._entry(peer)
        e.score += points
        e.reports += 1
        e.unlogged += 1
        e.kinds[what] = e.kinds.get(what, 0) + 1
        e.last_what = what
        now = e.at
        blocked = e.blocked = e.blocked or e.score >= self.threshold
        # Strictly one line per member per interval, blocking included: a score hovering around the
        # threshold must not turn every report into a line. The peers RPC shows the state at any time.
        if now - e.last_log >= self.log_interval:
            name = self.names.get(peer, peer[-8:])
            text = str(detail)
            if len(text) > 200:
                text = text[:197] + "..."
            log.warning("member %s sent bad input: %s (%s); %d report(s) since last line, score %.0f%s",
                        name, what, text, e.unlogged, e.score,
                        ", blocked: its tx gossip is dropped and block sync avoids it" if blocked else "",
                        exc_info=exc_info)
            self.log_lines += 1
            e.last_log = now
            e.unlogged = 0

    def snapshot(self) -> dict[str, dict]:
        """peer id -> {score, blocked, reports, dropped, kinds} for the peers RPC and /metrics."""
        out = {}
        for peer in list(self._peers):
            e = self._entry(peer)
            out[peer] = {"score": round(e.score, 1), "blocked": e.blocked,
                         "reports": e.reports, "dropped": e.dropped, "kinds": dict(e.kinds)}
        return out
