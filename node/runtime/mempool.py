"""Pending transactions: deduplicated, bounded, persisted before a submitter is told "pending".

Only what this node acknowledges or votes on is written to disk: its own clients' txs, and the txs a
compact proposal names (fetched, or held from gossip) before this node votes on it, since after a kill -9 the
vote relies on them. Otherwise gossip's txs are held in memory: their origin persisted them before
acknowledging and resends whatever has not committed to each peer it (re)connects to, so a copy on every
member's disk would be three more LevelDB writes and deletes (and their compaction) per tx for no guarantee
the origin lacks.

A tx leaves the mempool only when a committed block carries it. The primary marks the txs it proposes as
in flight so the next height does not propose them again; a view change releases them.

Backpressure: the mempool also measures the recent commit rate (txs leaving per second) and says when
clients should wait (`overload`): once the backlog is more than about DRAIN_SECONDS of commits, new
client txs are refused with a retry delay instead of queueing minutes of latency (gossip from members is
still taken up to `max_txs`, as the origin already acknowledged those). Every member's mempool holds the
consortium's whole backlog (gossip is a full mesh), so each node's own view of it is the right one.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

import plyvel

from node.ledger.refusals import MempoolFull
from node.runtime.diskspace import DiskFull, DiskGuard, free_bytes, is_disk_full

# Client txs are refused once the backlog exceeds what commits in this long at the recent rate. A tx
# admitted at the limit waits about this long before its block, plus ~0.3 s of consensus and the client's
# round trip: 1.5 s keeps the p99 commit latency of accepted txs within the 2 s goal (docs/PERFORMANCE.md).
DRAIN_SECONDS = 1.5
# The commit rate is measured over the blocks committed in this window.
RATE_WINDOW = 5.0
# Never refuse below this backlog: an idle chain has no recent rate, and the pipelined primary needs a
# few blocks' worth of txs at hand to keep the pipeline full.
MIN_BACKLOG = 1000
# Bounds of the retry delay handed to refused clients.
RETRY_MIN, RETRY_MAX = 0.05, 5.0
IDLE_RETRY = 1.0


@dataclass(frozen=True)
class Overload:
    """Why a client tx is refused now, and when to try again."""
    backlog: int
    limit: int
    commit_rate: float  # txs per second over the last RATE_WINDOW
    retry_after: float  # seconds

    def message(self) -> str:
        return (f"node busy: {self.backlog} txs wait to commit, over the ~{DRAIN_SECONDS:g} s "
                f"({self.limit} txs) the chain commits at its recent {self.commit_rate:.0f} tx/s; "
                f"retry after {self.retry_after:g} s (resubmitting is safe)")


class MempoolDiskFull(MempoolFull, DiskFull):
    """The disk under the mempool is full: nothing was admitted; the submitter should retry later."""


class Mempool:
    def __init__(self, path: Path | None, max_txs: int, *, min_backlog: int = MIN_BACKLOG,
                 drain_seconds: float = DRAIN_SECONDS):
        self.max_txs = max_txs
        self.min_backlog = min_backlog
        self.drain_seconds = drain_seconds
        self._commits: deque[tuple[float, int]] = deque()  # (monotonic time, txs) per committed block
        self._committed = 0  # sum of the txs in _commits: every client call asks for the rate (overload)
        self._txs: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()  # hash -> (raw, received at)
        self._in_flight: dict[bytes, int] = {}  # hash -> height proposed at
        # hash -> when first admitted, in admission order; unlike _txs never re-ordered by touch(), so the
        # oldest tx a primary leaves out stays the oldest (consensus' per-request timer, WorkPending.oldest)
        self._arrival: OrderedDict[bytes, float] = OrderedDict()
        self._on_disk: set[bytes] = set()  # the held txs written to the mempool's LevelDB (durable admissions)
        self._db = None
        self._path = path
        self.guard: DiskGuard | None = None  # set by the node: a full disk refuses admission until it clears
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
            self._db = _open_db(path)

    def restore(self, is_committed, now: float) -> int:
        """Re-admit what was acknowledged before the last stop, dropping what committed meanwhile."""
        if self._db is None:
            return 0
        gone = []
        for h, raw in self._db.iterator():
            if is_committed(h):
                gone.append(h)
            else:
                self._txs[h] = (raw, now)
                self._arrival[h] = now
                self._on_disk.add(h)
        if gone:
            with self._db.write_batch() as batch:
                for h in gone:
                    batch.delete(h)
        return len(self._txs)

    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, tx_hash: bytes) -> bool:
        return tx_hash in self._txs

    def raws(self):
        """(hash, wire bytes) of every tx held, oldest first (a snapshot: safe to admit meanwhile)."""
        return [(h, entry[0]) for h, entry in self._txs.items()]

    def get(self, tx_hash: bytes) -> bytes | None:
        entry = self._txs.get(tx_hash)
        return entry[0] if entry else None

    def add_many(self, items: list[tuple[bytes, bytes]], now: float, *, force: bool = False,
                 durable: bool = True) -> list[bytes]:
        """Admit (hash, raw) pairs not already held; returns the hashes that were new.
        `durable`: on disk on return, including txs already held in memory only (a client submitting a
        tx that gossip brought is acknowledged, so it must survive a restart here); gossip passes False.
        `force`: past `max_txs` (txs fetched for a proposal this node is about to validate: bounded by the
        proposals in flight, and they leave when their block commits)."""
        # One entry per hash: a tx repeated within the batch is admitted (and counted against max_txs) once.
        unique = {h: raw for h, raw in items}
        held = self._txs
        fresh = [(h, raw) for h, raw in unique.items() if h not in held]
        on_disk = self._on_disk
        writes = ([(h, raw) for h, raw in unique.items() if h not in on_disk]
                  if durable and self._db is not None else [])
        if not fresh and not writes:
            return []
        if fresh and not force and len(held) + len(fresh) > self.max_txs:
            raise MempoolFull(f"mempool holds {len(held)} of {self.max_txs} txs")
        if writes:
            if self.guard is not None and self.guard.full:
                raise self.disk_full(None)
            try:
                with self._db.write_batch() as batch:
                    for h, raw in writes:
                        batch.put(h, raw)
            except (plyvel.Error, OSError) as exc:
                if not is_disk_full(exc):
                    raise
                raise self.disk_full(exc) from None
            on_disk.update(h for h, _ in writes)
        for h, raw in fresh:
            held[h] = (raw, now)
            self._arrival[h] = now
        return [h for h, _ in fresh]

    def durable(self, tx_hash: bytes) -> bool:
        """Whether this node holds the tx on disk (not only in memory, as gossip's copies are)."""
        return tx_hash in self._on_disk

    def unmark(self, hashes) -> None:
        """Take txs out of flight again (a proposal built from them was not sent)."""
        for h in hashes:
            self._in_flight.pop(h, None)

    def take_for_proposal(self, max_txs: int, height: int) -> list[bytes]:
        """Txs held longest (first admission, which re-gossip does not reset) not already in flight; marks
        them in flight at `height`. First-admission order is what the per-request timers watch, so an
        honest primary under backlog proposes the tx its backups would complain about first."""
        chosen = []
        for h in self._arrival:
            if h in self._in_flight:
                continue
            self._in_flight[h] = height
            chosen.append(self._txs[h][0])
            if len(chosen) >= max_txs:
                break
        return chosen

    def oldest(self) -> tuple[bytes, float] | None:
        """(hash, time first admitted) of the tx held longest, or None."""
        return next(iter(self._arrival.items()), None)

    def available(self) -> int:
        return len(self._txs) - len(self._in_flight)

    def remove(self, hashes, now: float | None = None) -> None:
        """A committed block's txs leave (also counted for the commit rate)."""
        self._record_commit(len(hashes), time.monotonic() if now is None else now)
        removed = [h for h in hashes if self._txs.pop(h, None) is not None]
        for h in removed:
            del self._arrival[h]
        for h in hashes:
            self._in_flight.pop(h, None)
        on_disk = self._on_disk
        written = [h for h in removed if h in on_disk]
        if self._db is not None and written:
            on_disk.difference_update(written)
            try:
                with self._db.write_batch() as batch:
                    for h in written:
                        batch.delete(h)
            except (plyvel.Error, OSError) as exc:
                # Safe to go on: restore() drops whatever committed meanwhile, so a stale entry is harmless.
                if not is_disk_full(exc):
                    raise
                self.disk_full(exc)

    def disk_full(self, exc: BaseException | None = None) -> MempoolDiskFull:
        """The refusal to raise while the disk is full (records the failed write `exc`, if any)."""
        if self.guard is not None:
            base = self.guard.trip(self._path, exc) if exc is not None else self.guard.refusal()
            return MempoolDiskFull(base.path, base.free, base.retry_after)
        return MempoolDiskFull(self._path, free_bytes(self._path))

    def reopen(self) -> None:
        """Close and reopen LevelDB after a failed write: it keeps that error (and may hold a half-written
        log record) until reopened, when it recovers to the last whole write."""
        if self._db is not None:
            self._db.close()
            self._db = _open_db(self._path)

    def release_in_flight(self, up_to_height: int | None = None) -> None:
        """Make proposed-but-uncommitted txs proposable again (after a view change, or once their height
        committed without them)."""
        if up_to_height is None:
            self._in_flight.clear()
        else:
            self._in_flight = {h: ht for h, ht in self._in_flight.items() if ht > up_to_height}

    def stale(self, older_than: float, limit: int) -> list[bytes]:
        """Txs waiting longer than a gossip round should take: re-gossip them in case a message was lost."""
        out = []
        for raw, received in self._txs.values():
            if received > older_than:
                break  # insertion order is arrival order
            out.append(raw)
            if len(out) >= limit:
                break
        return out

    def touch(self, raws_hashes: list[bytes], now: float) -> None:
        for h in raws_hashes:
            entry = self._txs.pop(h, None)
            if entry is not None:
                self._txs[h] = (entry[0], now)

    # ------------------------------------------------------------------ backpressure
    def _record_commit(self, n: int, now: float) -> None:
        self._commits.append((now, n))
        self._committed += n
        self._expire(now)

    def _expire(self, now: float) -> None:
        commits = self._commits
        while commits and commits[0][0] < now - RATE_WINDOW:
            self._committed -= commits.popleft()[1]

    def commit_rate(self, now: float) -> float:
        """Txs committed per second over the last RATE_WINDOW seconds (0 when nothing committed)."""
        self._expire(now)
        if not self._commits:
            return 0.0
        # Over the window, or since the first block in it when the chain just started committing; at least
        # 1 s so one block right after an idle spell does not read as a huge rate.
        span = max(1.0, min(RATE_WINDOW, now - self._commits[0][0]))
        return self._committed / span

    def admission_limit(self, now: float) -> int:
        return max(self.min_backlog, int(self.commit_rate(now) * self.drain_seconds))

    def overload(self, now: float) -> Overload | None:
        """None when a client tx may be admitted now; else how long the client should wait. O(1) amortised."""
        backlog = len(self._txs)
        if backlog < self.min_backlog:
            return None
        rate = self.commit_rate(now)
        limit = max(self.min_backlog, int(rate * self.drain_seconds))
        if backlog < limit and backlog < self.max_txs:
            return None
        # Come back when the backlog should be down to half the limit: the proposer still has txs at hand,
        # so refusals never starve the pipeline. Nothing committed for RATE_WINDOW (a chain that was idle
        # and just got a burst, or one in a view change): ask again in IDLE_RETRY, refusals are cheap.
        wait = (backlog - limit / 2) / rate if rate > 0 else IDLE_RETRY
        return Overload(backlog, limit, rate, round(min(RETRY_MAX, max(RETRY_MIN, wait)), 2))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _open_db(path) -> plyvel.DB:
    # Uncompressed: an entry lives from admission to its block's commit (about a second), and what LevelDB
    # does with it after is flush it and compact it away. Snappy cost the shared compaction thread CPU on every
    # one of those passes for records that are deleted before the disk space could matter.
    return plyvel.DB(str(path), create_if_missing=True, compression=None)
