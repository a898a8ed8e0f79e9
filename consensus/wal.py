"""Write-ahead-log records. The replica emits Persist(record) before it sends anything the record covers, so
a replica restarted after kill -9 (Replica(..., wal=records)) never signs a message that conflicts with one
it sent before, and still carries its prepared certificates into view changes.

Records (msgpack lists, first element a tag):
  ["view", w]                         about to send VIEW-CHANGE for view w
  ["newview", w, newview_wire]        entered view w (the NEW-VIEW it accepted or built)
  ["vote", v, h, d, payload|None]     about to sign a pre-prepare/prepare vote for digest d at (v, h)
  ["commit", v, h, d, [[i, sig]..]]   about to sign COMMIT; the list is the prepared certificate (2f+1 votes)
  ["stable", h, state_digest, proof]  checkpoint h became stable (proof: 2f+1 checkpoint signatures)
Records for heights at or below the newest stable checkpoint are obsolete: compact() drops them.
"""

from __future__ import annotations

from typing import NamedTuple

import msgpack

from .messages import MAX_DIGEST, MAX_SIG


class WalError(ValueError):
    pass


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def view_record(view: int) -> bytes:
    return _pack(["view", view])


def newview_record(view: int, wire: bytes) -> bytes:
    return _pack(["newview", view, wire])


def vote_record(view: int, height: int, digest: bytes, payload: bytes | None) -> bytes:
    return _pack(["vote", view, height, digest, payload])


def commit_record(view: int, height: int, digest: bytes, proof: tuple[tuple[int, bytes], ...]) -> bytes:
    return _pack(["commit", view, height, digest, [[i, s] for i, s in proof]])


def stable_record(height: int, state_digest: bytes, proof: tuple[tuple[int, bytes], ...]) -> bytes:
    return _pack(["stable", height, state_digest, [[i, s] for i, s in proof]])


def is_stable_record(record: bytes) -> bool:
    """Whether record is a ["stable", ...] record, without decoding it (a msgpack fixarray of 4, then the
    fixstr "stable"): a runtime can compact its WAL after each one it appends."""
    return record[:8] == b"\x94\xa6stable"


def _int(x) -> int:
    if type(x) is not int or x < 0:
        raise WalError("bad integer")
    return x


def _b(x, limit: int | None = None) -> bytes:
    if type(x) is not bytes or (limit is not None and len(x) > limit):
        raise WalError("bad bytes")
    return x


def _proof(x) -> tuple[tuple[int, bytes], ...]:
    if type(x) is not list:
        raise WalError("bad proof")
    out = []
    for item in x:
        if type(item) is not list or len(item) != 2:
            raise WalError("bad proof item")
        out.append((_int(item[0]), _b(item[1], MAX_SIG)))
    return tuple(out)


def decode(record: bytes) -> tuple:
    """Parse one record into a tuple (tag, ...). Raises WalError for a torn or foreign record."""
    try:
        raw = msgpack.unpackb(record, raw=False, strict_map_key=True)
    except Exception as exc:
        raise WalError(f"undecodable record: {type(exc).__name__}") from exc
    if type(raw) is not list or not raw or type(raw[0]) is not str:
        raise WalError("not a WAL record")
    tag, rest = raw[0], raw[1:]
    try:
        if tag == "view" and len(rest) == 1:
            return (tag, _int(rest[0]))
        if tag == "newview" and len(rest) == 2:
            return (tag, _int(rest[0]), _b(rest[1]))
        if tag == "vote" and len(rest) == 4:
            payload = None if rest[3] is None else _b(rest[3])
            return (tag, _int(rest[0]), _int(rest[1]), _b(rest[2], MAX_DIGEST), payload)
        if tag == "commit" and len(rest) == 4:
            return (tag, _int(rest[0]), _int(rest[1]), _b(rest[2], MAX_DIGEST), _proof(rest[3]))
        if tag == "stable" and len(rest) == 3:
            return (tag, _int(rest[0]), _b(rest[1], MAX_DIGEST), _proof(rest[2]))
    except (TypeError, IndexError) as exc:
        raise WalError("malformed record") from exc
    raise WalError(f"unknown record {tag!r}")


class Replayed(NamedTuple):
    """What a replica's WAL says about it (replay): its view and phase, the NEW-VIEW it entered last, its
    newest stable checkpoint, and the votes and commits it signed, in WAL order."""
    view: int
    in_view_change: bool
    new_view_wire: bytes | None  # the NEW-VIEW of new_view_view (entered), None if it entered none
    new_view_view: int
    stable: tuple[int, bytes, tuple[tuple[int, bytes], ...]] | None  # (height, state digest, proof)
    votes: tuple[tuple, ...]    # ("vote", v, h, d, payload|None)
    commits: tuple[tuple, ...]  # ("commit", v, h, d, prepared certificate)
    bad_records: int            # torn or foreign records skipped


def replay(records) -> Replayed:
    """Fold a WAL (oldest record first) into the state a restarting replica resumes from."""
    view, in_vc, nv_wire, nv_view, stable = 0, False, None, 0, None
    votes, commits, bad = [], [], 0
    for rec in records:
        try:
            r = decode(rec)
        except (WalError, TypeError):
            bad += 1
            continue
        tag = r[0]
        if tag == "view" and r[1] > view:
            view, in_vc = r[1], True
        elif tag == "newview" and r[1] >= view:
            view, in_vc, nv_wire, nv_view = r[1], False, r[2], r[1]
        elif tag == "vote":
            votes.append(r)
        elif tag == "commit":
            commits.append(r)
        elif tag == "stable" and r[1] > (stable[0] if stable is not None else 0):
            stable = r[1:]
    return Replayed(view, in_vc, nv_wire, nv_view, stable, tuple(votes), tuple(commits), bad)


def compact(records) -> list[bytes]:
    """The records a restart still needs: the newest stable checkpoint, the newest view records, and votes
    above the stable checkpoint. The runtime may rewrite its WAL file with this list (atomically)."""
    parsed = []
    for r in records:
        try:
            parsed.append((decode(r), r))
        except WalError:
            continue
    stable = max((p[1] for p, _ in parsed if p[0] == "stable"), default=0)
    top_view = max((p[1] for p, _ in parsed if p[0] in ("view", "newview")), default=0)
    out = []
    kept_stable = False
    for p, r in reversed(parsed):
        tag = p[0]
        if tag == "stable":
            if p[1] == stable and not kept_stable:
                out.append(r)
                kept_stable = True
        elif tag in ("view", "newview"):
            if p[1] == top_view:
                out.append(r)
        elif p[2] > stable:
            out.append(r)
    out.reverse()
    return out
