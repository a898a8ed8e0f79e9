"""Pending transactions: deduplicated, bounded, persisted before a submitter is told "pending".

A tx leaves the mempool only when a committed block carries it. The primary marks the txs it proposes as
in flight so the next height does not propose them again; a view change releases them.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import plyvel


class MempoolFull(Exception):
    """The mempool holds its configured maximum; the submitter should retry later."""


class Mempool:
    def __init__(self, path: Path | None, max_txs: int):
        self.max_txs = max_txs
        self._txs: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()  # hash -> (raw, received at)
        self._in_flight: dict[bytes, int] = {}  # hash -> height proposed at
        # hash -> when first admitted, in admission order; unlike _txs never re-ordered by touch(), so the
        # oldest tx a primary leaves out stays the oldest (consensus' per-request timer, WorkPending.oldest)
        self._arrival: OrderedDict[bytes, float] = OrderedDict()
        self._db = None
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
            self._db = plyvel.DB(str(path), create_if_missing=True)

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
        if gone:
            with self._db.write_batch() as batch:
                for h in gone:
                    batch.delete(h)
        return len(self._txs)

    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, tx_hash: bytes) -> bool:
        return tx_hash in self._txs

    def get(self, tx_hash: bytes) -> bytes | None:
        entry = self._txs.get(tx_hash)
        return entry[0] if entry else None

    def add_many(self, items: list[tuple[bytes, bytes]], now: float) -> list[bytes]:
        """Admit (hash, raw) pairs not already held; returns the hashes that were new. Durable on return."""
        fresh = [(h, raw) for h, raw in items if h not in self._txs]
        if not fresh:
            return []
        if len(self._txs) + len(fresh) > self.max_txs:
            raise MempoolFull(f"mempool holds {len(self._txs)} of {self.max_txs} txs")
        if self._db is not None:
            with self._db.write_batch() as batch:
                for h, raw in fresh:
                    batch.put(h, raw)
        for h, raw in fresh:
            self._txs[h] = (raw, now)
            self._arrival[h] = now
        return [h for h, _ in fresh]

    def take_for_proposal(self, max_txs: int, height: int) -> list[bytes]:
        """Oldest txs not already in flight; marks them in flight at `height`."""
        chosen = []
        for h, (raw, _) in self._txs.items():
            if h in self._in_flight:
                continue
            self._in_flight[h] = height
            chosen.append(raw)
            if len(chosen) >= max_txs:
                break
        return chosen

    def oldest(self) -> tuple[bytes, float] | None:
        """(hash, time first admitted) of the tx held longest, or None."""
        return next(iter(self._arrival.items()), None)

    def available(self) -> int:
        return len(self._txs) - len(self._in_flight)

    def remove(self, hashes) -> None:
        removed = [h for h in hashes if self._txs.pop(h, None) is not None]
        for h in removed:
            del self._arrival[h]
        for h in hashes:
            self._in_flight.pop(h, None)
        if self._db is not None and removed:
            with self._db.write_batch() as batch:
                for h in removed:
                    batch.delete(h)

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

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
