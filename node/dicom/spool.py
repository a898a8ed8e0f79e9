"""The DICOM hook's durable spool: HOME/spool/, one JSON file per event, safe across processes.

Every source (proxy, Orthanc plugin, ATNA receiver, folder import) calls `Spool.put` and acknowledges its own
peer only after it returns: by then the event file is written, fsynced and renamed into `pending/`, and the
directory entry is fsynced too (the rename is what makes an event visible, so a crash leaves either nothing
or a whole event; half-written files stay in `tmp/` and are swept).

Layout (directories 0700, files 0600: the spool is inside the hospital's PHI boundary and holds raw
identifiers, which never leave the node):

    spool/tmp/              files being written
    spool/staged/           C-STORE events made durable while the PACS works, waiting for its answer
    spool/pending/          events waiting for delivery, named <time_ns>-<pid>-<seq>.json (FIFO order);
                            one event per file, or a segment's events one per line
    spool/dead/             events the node refused as invalid, with the reason (never retried)
    spool/delivered.jsonl   event_id -> tx hash of every delivered event (no identifiers)
    spool/journal.jsonl     local-only records (associations, peers' IP addresses) that never go on chain
    spool/deliver.lock      flock held by the one process delivering (see delivery.py)

Staged events (the proxy's C-STORE path): fsync latency on a busy disk is 5-15 ms, as much as the PACS takes
to store an instance, so it must not sit between the PACS's answer and the modality. The proxy stages the
event (fsync) as soon as the instance has arrived, in parallel with the PACS; when the PACS answers, the event
moves to pending/ with the outcome in its name (`...~o0.json`) by a rename without fsync (done right after
the answer is relayed: the rename is not what makes the event durable). A crash can lose that rename but not
the event: a staged event whose answer is unknown
is settled later by asking the PACS whether it holds the instance (`settle_staged`, C-FIND in proxy.py):
held -> outcome 0, not held -> 8.

Staged segments and group commit (`stage_grouped`, the proxy's C-STORE path). Creating a file costs
~0.6 ms of CPU and ~1.4 ms on the development VM, as much as its flush, so C-STORE events are not one file
each: they are appended, one JSON line per event, to an open segment in staged/ (up to SEGMENT_MAX events or
SEGMENT_AGE seconds, then a new one), and flushed with fdatasync. Concurrent callers share flushes: the first
caller to find no flush running appends everything queued so far in one write, flushes once and wakes the
others; whoever arrives meanwhile waits for the next flush, started as soon as that one returns. The
outcomes of a segment's events arrive one by one (one per association, in any order); they are kept in
memory, and once the segment is sealed and its last outcome known it moves to pending/ by a rename, all
outcomes in its name (`...~o0.0.8.json`, in line order). A crash loses those in-memory outcomes, not the
events: settling asks the PACS about each event whose outcome is unknown, and reads a segment up to its
last whole line (a torn tail was never flushed, so never acknowledged).

Standard library only: the Orthanc plugin imports this module inside Orthanc's embedded Python.
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


SEGMENT_MAX = 64    # events in one staged segment (stage_grouped): bounds a file and the outcome list in its name
SEGMENT_AGE = 0.5   # seconds a segment stays open; then it is sealed and heads for delivery (seal_idle)


class _Waiter:
    __slots__ = ("record", "done", "name", "index", "error")

    def __init__(self, record: dict):
        self.record = record
        self.done = False
        self.name: str | None = None
        self.index = 0
        self.error: SpoolError | None = None


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
        # group commit (stage_grouped): events waiting for the next fsync, and whether one is running
        self._group_cond = threading.Condition()
        self._group_queue: list[_Waiter] = []
        self._group_busy = False
        self._partial: dict[str, list[int | None]] = {}  # segment name -> outcomes known so far
        self._sealed: set[str] = set()  # segments closed for writing, waiting for outcomes
        self._seg_name: str | None = None  # the open segment (written by the group leader only)
        self._seg_fd = -1
        self._seg_count = 0
        self._seg_flushes = 0
        self._seg_opened = 0.0
        self._fsync = os.fdatasync  # a test may hold one flush back to watch others queue (test_spool.py)
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
                data = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
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
                os.write(fd, json.dumps(record, separators=(",", ":"), sort_keys=True).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise SpoolError(f"cannot stage event in {self.root}: {exc}") from exc
        return name

    def _record(self, event: dict, source: str, local: dict | None) -> dict:
        event = dict(event)
        event.setdefault("event_id", new_event_id())
        record = {"event": event, "source": source, "spooled_at": time.time()}
        if local:
            record["local"] = local
        return record

    def stage_grouped(self, event: dict, *, source: str, local: dict | None = None) -> tuple[str, int]:
        """`stage` for concurrent callers (worker threads): events that arrive while an fsync runs share the
        next one (module doc, "group commit"). Blocks until this event is durable; returns (staged name, index
        of the event in that file). Raises SpoolError when the file could not be written: then none of the
        events in it is acknowledged."""
        me = _Waiter(self._record(event, source, local))
        cond = self._group_cond
        with cond:
            self._group_queue.append(me)
            while not me.done:
                if self._group_busy:
                    cond.wait()
                    continue
                # leader: write everything queued so far (this caller's event included) with one fsync
                self._group_busy = True
                batch = self._group_queue[:SEGMENT_MAX]
                del self._group_queue[:SEGMENT_MAX]
                cond.release()
                try:
                    (name, first), error = self._write_group([w.record for w in batch]), None
                except SpoolError as exc:
                    name, first, error = None, 0, exc
                finally:
                    cond.acquire()
                    self._group_busy = False
                for i, w in enumerate(batch):
                    w.done, w.name, w.index, w.error = True, name, first + i, error
                cond.notify_all()
        if me.error is not None:
            raise me.error
        return me.name, me.index

    def _write_group(self, records: list[dict]) -> tuple[str, int]:
        """Append records to the open segment (opening one first if there is none, or it is full or old),
        then one fdatasync. Only the group leader runs this, one at a time (_group_busy)."""
        assert 0 < len(records) <= SEGMENT_MAX, len(records)
        lines = b"".join(json.dumps(r, separators=(",", ":"), sort_keys=True).encode() + b"\n" for r in records)
        try:
            if self._seg_name is None or self._seg_count + len(records) > SEGMENT_MAX or \
                    time.monotonic() - self._seg_opened > SEGMENT_AGE:
                self._seal()
                name = f"{time.time_ns():020d}-{os.getpid()}-{next(self._seq):08d}.json"
                fd = os.open(self.staged_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, _FILE_MODE)
                with self._lock:
                    self._partial[name] = []
                self._seg_name, self._seg_fd, self._seg_count, self._seg_flushes = name, fd, 0, 0
                self._seg_opened = time.monotonic()
            name, first = self._seg_name, self._seg_count
            with self._lock:
                self._partial[name] += [None] * len(records)
            self._seg_count += len(records)
            if os.write(self._seg_fd, lines) != len(lines):
                raise OSError("short write")
            self._fsync(self._seg_fd)  # one flush for the whole group: the point of grouping
            self._seg_flushes += 1
        except OSError as exc:
            # the segment may now end in a torn line: close it; settling reads it up to the last whole line
            try:
                self._seal()
            except OSError:
                pass
            raise SpoolError(f"cannot stage event in {self.root}: {exc}") from exc
        return name, first

    def _seal(self) -> None:
        """Close the open segment: it takes no more events, and moves to pending/ once every outcome is known.
        Caller holds _group_busy (no writer meanwhile)."""
        name = self._seg_name
        if name is None:
            return
        fd, count, flushes = self._seg_fd, self._seg_count, self._seg_flushes
        self._seg_name, self._seg_fd, self._seg_count = None, -1, 0
        os.close(fd)
        # how well concurrent events share flushes (bench.dicom reads this); no identifiers
        self.journal({"what": "segment-sealed", "file": name, "events": count, "flushes": flushes})
        with self._lock:
            slots = self._partial.get(name)
            if slots is None or any(o is None for o in slots):
                self._sealed.add(name)
                return
            del self._partial[name]
        self._finish(name, slots)

    def seal_idle(self, max_age: float = SEGMENT_AGE) -> bool:
        """Seal the open segment if it is older than max_age seconds and no write is running (the proxy calls
        this a few times a second so that a quiet association's events are delivered promptly)."""
        cond = self._group_cond
        with cond:
            if self._group_busy or self._seg_name is None or time.monotonic() - self._seg_opened < max_age:
                return False
            self._group_busy = True
        try:
            self._seal()
        finally:
            with cond:
                self._group_busy = False
                cond.notify_all()
        return True

    def is_open(self, name: str) -> bool:
        """Is `name` a segment this process still writes to or awaits outcomes for? (settling skips those)"""
        with self._lock:
            return name in self._partial and name not in self._sealed

    def commit_staged(self, name: str, outcome: int, index: int = 0) -> bool:
        """The outcome of event `index` of staged file `name` is known. A single-event file (stage) becomes
        deliverable at once (a rename, no fsync: see module doc); a segment (stage_grouped) once it is
        sealed and its last outcome is known. Returns True when the file moved to pending/."""
        with self._lock:
            slots = self._partial.get(name)
            if slots is None:
                assert index == 0, (name, index)
                outcomes = [int(outcome)]
            else:
                assert 0 <= index < len(slots), (name, index)
                slots[index] = int(outcome)
                if name not in self._sealed or any(o is None for o in slots):
                    return False
                del self._partial[name]
                self._sealed.discard(name)
                outcomes = slots
        self._finish(name, outcomes)
        return True

    def known_outcomes(self, name: str) -> list[int | None] | None:
        """The outcomes known so far for a segment (None for a single-event file or after a restart)."""
        with self._lock:
            slots = self._partial.get(name)
            return list(slots) if slots is not None else None

    def settle(self, name: str, outcomes: list[int]) -> None:
        """Settling (proxy.settle_staged): every outcome of a staged file decided, move it to pending/."""
        with self._lock:
            self._partial.pop(name, None)
            self._sealed.discard(name)
        self._finish(name, [int(o) for o in outcomes])

    def _finish(self, name: str, outcomes: list[int]) -> None:
        os.rename(self.staged_dir / name,
                  self.pending_dir / f"{name[:-5]}~o{'.'.join(str(o) for o in outcomes)}.json")
        self.wakeup.set()

    @staticmethod
    def staged_records(path: Path) -> list[dict]:
        """The records of a staged file, in order, up to its last whole line: a crash while appending can
        leave a torn last line, whose events were never acknowledged (their flush had not returned)."""
        records = []
        for line in path.read_bytes().split(b"\n"):
            try:
                record = json.loads(line)
            except ValueError:
                break
            if not isinstance(record, dict) or not isinstance(record.get("event"), dict):
                break
            records.append(record)
        if not records:
            raise ValueError("staged file without a whole event")
        return records

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
        records = Spool.load_all(path)
        if len(records) != 1:
            raise ValueError(f"{path.name} holds {len(records)} events; use load_all")
        return records[0]

    @staticmethod
    def load_all(path: Path) -> list[dict]:
        """The records of a pending file, one per line: one event, or a segment's (stage_grouped), each with
        the outcome its name carries (a committed staged event: `...~o0.json`, `...~o0.0.8.json`)."""
        records = [json.loads(line) for line in path.read_bytes().split(b"\n") if line.strip()]
        if not records or len(records) > SEGMENT_MAX:
            raise ValueError("no events, or more than a segment holds")
        for record in records:
            if not isinstance(record, dict) or not isinstance(record.get("event"), dict):
                raise ValueError("a record without an event")
        stem = path.name[:-5]
        if "~o" in stem:
            outcomes = [int(o) for o in stem.rsplit("~o", 1)[1].split(".")]
            if len(outcomes) != len(records):
                raise ValueError(f"{len(outcomes)} outcomes in the name for {len(records)} events")
            for record, outcome in zip(records, outcomes, strict=True):
                record["event"]["outcome"] = outcome
        return records

    def mark_delivered(self, path: Path, event_id: str, result: dict, *, remove: bool = True) -> None:
        """Log event_id -> tx, then remove the file (a group file: only once all its events are done)."""
        line = json.dumps({"event_id": event_id, "tx": result.get("tx"), "status": result.get("status"),
                           "height": result.get("height"), "time": time.time()}) + "\n"
        with self._lock:
            fd = os.open(self.root / "delivered.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, _FILE_MODE)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        # A crash between the two steps redelivers the event: the node dedupes it by event_id.
        if remove:
            path.unlink(missing_ok=True)

    def mark_dead(self, path: Path, reason: str, record: dict | None = None, *, member: int | None = None) -> Path:
        """Move a file to dead/; with `member`, dead-letter that one event of a group file and leave the file
        (the caller removes it once all its events are done)."""
        if member is not None:
            target = self.dead_dir / f"{path.name[:-5]}-{member}.json"
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _FILE_MODE)
            try:
                os.write(fd, json.dumps({"reason": reason, "time": time.time(), "record": record}, indent=1).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync_dir(self.dead_dir)
            return target
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
