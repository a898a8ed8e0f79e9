"""The DICOM hook's durable spool: HOME/spool/, one JSON file per event, safe across processes.

Every source (proxy, Orthanc plugin, ATNA receiver, folder import) calls `Spool.put` and acknowledges its own
peer only after it returns: by then the event file is written, fsynced and renamed into `pending/`, and the
directory entry is fsynced too (the rename is what makes an event visible, so a crash leaves either nothing
or a whole event; half-written files stay in `tmp/` and are swept).

Layout (directories 0700, files 0600: the spool is inside the hospital's PHI boundary and holds raw
identifiers, which never leave the node):

    spool/tmp/              files being written
    spool/staged/           C-STORE events made durable while the PACS works, waiting for its answer
    spool/pending/          events waiting for delivery, named <time_ns>-<pid>-<seq>.json (FIFO order)
    spool/dead/             events the node refused as invalid, with the reason (never retried)
    spool/delivered.jsonl   event_id -> tx hash of every delivered event (no identifiers)
    spool/journal.jsonl     local-only records (associations, peers' IP addresses) that never go on chain
    spool/deliver.lock      flock held by the one process delivering (see delivery.py)

Staged events (the proxy's C-STORE path): fsync latency on a busy disk is 5-15 ms, as much as the PACS takes
to store an instance, so it must not sit between the PACS's answer and the modality. The proxy stages the
event (fsync) as soon as the instance has arrived, in parallel with the PACS; when the PACS answers, the event
moves to pending/ with the outcome in its name (`...~o0.json`) by a rename without fsync, and only then is
the answer relayed. A crash can lose that rename but not the event: a staged event whose answer is unknown
is settled later by asking the PACS whether it holds the instance (`settle_staged`, C-FIND in proxy.py):
held -> outcome 0, not held -> 8.

Standard library only: the Orthanc plugin imports this module inside Orthanc's embedded Python (orjson, when
installed, only encodes faster; json does the same job without it).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
import uuid
from pathlib import Path

_DIR_MODE = 0o700
_FILE_MODE = 0o600


try:
    import orjson
except ImportError:  # Orthanc's embedded Python: the plugin
    orjson = None


def _encode(record: dict) -> bytes:
    """Compact JSON with sorted keys (orjson is ~10x faster on the proxy's path; json takes what it cannot,
    such as a non-string key)."""
    if orjson is not None:
        try:
            return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            pass
    return json.dumps(record, separators=(",", ":"), sort_keys=True).encode()


class SpoolError(OSError):
    """The spool could not durably store an event (disk full, permissions): the source must not ack."""


def new_event_id(prefix: str = "dcm") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.pending_dir = self.root / "pending"
        self.dead_dir = self.root / "dead"
        self.staged_dir = self.root / "staged"
        for d in (self.root, self.tmp, self.pending_dir, self.dead_dir, self.staged_dir):
            d.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            os.chmod(d, _DIR_MODE)
        self._seq = itertools.count()
        self._lock = threading.Lock()
        # Set whenever an event is added; an in-process deliverer waits on it instead of polling.
        self.wakeup = threading.Event()

    # -- producing -------------------------------------------------------------------------------------
    def put(self, event: dict, *, source: str, local: dict | None = None) -> str:
        """Durably store one event; returns its event_id (assigned here when the source gave none)."""
        return self.put_many([event], source=source, local=local)[0]

    def put_many(self, events: list[dict], *, source: str, local: dict | None = None) -> list[str]:
        """Store several events with one directory fsync (group commit). All or nothing is not promised:
        on error some events may be stored, which is harmless because delivery is idempotent by event_id."""
        ids, staged = [], []
        try:
            for event in events:
                event = dict(event)
                event.setdefault("event_id", new_event_id())
                record = {"event": event, "source": source, "spooled_at": time.time()}
                if local:
                    record["local"] = local
                name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._seq):08d}.json"
                tmp_path = self.tmp / name
                data = _encode(record)
                fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
                try:
                    os.write(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                staged.append((tmp_path, self.pending_dir / name))
                ids.append(event["event_id"])
            for tmp_path, final in staged:
                os.rename(tmp_path, final)
            _fsync_dir(self.pending_dir)
        except OSError as exc:
            raise SpoolError(f"cannot spool event in {self.root}: {exc}") from exc
        self.wakeup.set()
        return ids

    def stage(self, event: dict, *, source: str, local: dict | None = None) -> str:
        """Durably store an event whose outcome is not known yet; returns its staged name.

        One fsync, not put()'s two: the file is created in staged/ directly and fsynced, which on ext4 (and
        XFS, btrfs) also commits its directory entry. A crash during the write leaves a torn file; it was
        never acknowledged, and settling drops files that do not parse."""
        event = dict(event)
        event.setdefault("event_id", new_event_id())
        record = {"event": event, "source": source, "spooled_at": time.time()}
        if local:
            record["local"] = local
        name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._seq):08d}.json"
        try:
            fd = os.open(self.staged_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
            try:
                os.write(fd, _encode(record))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise SpoolError(f"cannot stage event in {self.root}: {exc}") from exc
        return name

    def commit_staged(self, name: str, outcome: int) -> None:
        """The outcome is known: make the staged event deliverable (a rename, no fsync: see module doc)."""
        os.rename(self.staged_dir / name, self.pending_dir / f"{name[:-5]}~o{int(outcome)}.json")
        self.wakeup.set()

    def drop_staged(self, name: str) -> None:
        (self.staged_dir / name).unlink(missing_ok=True)

    def staged(self) -> list[Path]:
        return sorted(self.staged_dir.glob("*.json"))

    def journal(self, record: dict) -> None:
        """Append a local-only record (never delivered): association details, peer IP addresses."""
        line = json.dumps({"time": time.time(), **record}, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            fd = os.open(self.root / "journal.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, _FILE_MODE)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)

    # -- consuming -------------------------------------------------------------------------------------
    def pending(self) -> list[Path]:
        return sorted(self.pending_dir.glob("*.json"))

    def count(self) -> int:
        return sum(1 for _ in self.pending_dir.glob("*.json"))

    def dead(self) -> list[Path]:
        return sorted(self.dead_dir.glob("*.json"))

    def delivered(self) -> dict[str, dict]:
        """event_id -> {"tx", "status", ...} for every event delivered so far."""
        out: dict[str, dict] = {}
        path = self.root / "delivered.jsonl"
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue  # a torn last line after a crash; the event is redelivered anyway
                out[rec["event_id"]] = rec
        return out

    @staticmethod
    def load(path: Path) -> dict:
        record = json.loads(path.read_bytes())
        stem = path.name[:-5]
        if "~o" in stem:  # a committed staged event: the outcome is in the name
            record["event"]["outcome"] = int(stem.rsplit("~o", 1)[1])
        return record

    def mark_delivered(self, path: Path, event_id: str, result: dict) -> None:
        line = json.dumps({"event_id": event_id, "tx": result.get("tx"), "status": result.get("status"),
                           "height": result.get("height"), "time": time.time()}) + "\n"
        with self._lock:
            fd = os.open(self.root / "delivered.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, _FILE_MODE)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        # A crash between the two steps redelivers the event: the node dedupes it by event_id.
        path.unlink(missing_ok=True)

    def mark_dead(self, path: Path, reason: str, record: dict | None = None) -> Path:
        target = self.dead_dir / path.name
        doc = {"reason": reason, "time": time.time(), "record": record}
        if record is None:
            doc["raw"] = path.read_bytes().decode("utf-8", "replace")
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
        try:
            os.write(fd, json.dumps(doc, indent=1).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        path.unlink(missing_ok=True)
        _fsync_dir(self.dead_dir)
        return target

    def sweep_tmp(self, older_than: float = 60.0) -> int:
        """Remove files a crashed writer left in tmp/ (never acknowledged, so never promised)."""
        n = 0
        now = time.time()
        for p in self.tmp.iterdir():
            try:
                if now - p.stat().st_mtime > older_than:
                    p.unlink()
                    n += 1
            except FileNotFoundError:
                pass
        return n
