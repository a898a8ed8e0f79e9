"""ITI-81 (Retrieve ATNA Audit Event) search parameters -> a bounded walk over the store's indexes.

Parameters (every other one is refused with 400: strict handling, so a client never gets a silently
unfiltered answer):

- ``date`` (repeatable) with prefixes ``ge``/``gt``/``le``/``lt``/``eq`` (none = ``eq``), at year, month,
  day or instant precision; a value without a timezone is UTC
- ``patient``: a patient token (32 hex digits), optionally as ``Patient/<token>`` or ``<system>|<token>``
- ``entity``: a study token (same forms)
- ``agent``: a user token (32 hex digits) or an AE title (at most 16 characters, so never ambiguous)
- ``source``: the recording member (hospital) name
- ``type``: a DICOM EventID (``110103`` or ``http://dicom.nema.org/resources/ontology/DCM|110103``)
- ``subtype``: a RadChain tx type (``instances.accessed`` or ``urn:radchain:tx-type|instances.accessed``)
- ``outcome``: ``0``, ``4``, ``8`` or ``12``
- ``_count`` (1..1000, default 100) and ``_cursor`` (opaque, from a ``next`` link)

Comma-separated values (OR) are accepted for ``type``, ``subtype`` and ``outcome``.

The most selective parameter picks the index (node.rpc.audit_trail.Filter: study, patient, user, AE, tx type,
member, time); the others are checked per tx. Each page examines at most ``_count * SCAN_FACTOR`` index
entries, so a page may hold fewer than ``_count`` entries while still having a ``next`` link.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from node.fhir.mapping import DCM, EVENT_TYPES, PATIENT_SYSTEM, STUDY_SYSTEM, TX_TYPE_SYSTEM, USER_SYSTEM
from node.ledger.store import IndexEntry, StoreError
from node.ledger.tx import TOKEN_BYTES, TX_TYPES
from node.rpc.audit_trail import SCAN_FACTOR, Filter, _cursor
from node.rpc.render import stored_tx

DEFAULT_COUNT = 100
MAX_COUNT = 1000
MAX_PARAMS = 32  # query parameters per request, counted before any is parsed
MAX_VALUE = 256  # characters per value (the longest legitimate one is a system|code token)
KNOWN = frozenset({"date", "patient", "entity", "agent", "source", "type", "subtype", "outcome", "_count",
                   "_cursor", "_format"})


class SearchError(ValueError):
    """A search parameter is malformed; the message names it (the answer is a 400 OperationOutcome)."""


@dataclass(frozen=True)
class Search:
    flt: Filter  # equality fields + the time window; picks the index
    types: frozenset[str] | None  # allowed tx types when more than one (None: any)
    outcomes: frozenset[int] | None
    count: int
    cursor: str | None

    def matches(self, fields: dict) -> bool:
        if not self.flt.matches(fields):
            return False
        if self.types is not None and fields["type"] not in self.types:
            return False
        return self.outcomes is None or fields.get("outcome", 0) in self.outcomes


# ASCII only: \d alone would also take Arabic-Indic and other Unicode digits, which int() accepts
_DATE = re.compile(r"(ge|gt|le|lt|eq)?(\d{4})(?:-(\d{2})(?:-(\d{2})(T[0-9:.]+(?:Z|[+-]\d{2}:\d{2})?)?)?)?",
                   re.ASCII)


def _date_range(value: str) -> tuple[str, int, int]:
    """'ge2026-12-01' -> ('ge', start ms, end ms) of the value's precision (end exclusive)."""
    m = _DATE.fullmatch(value)
    if m is None:
        raise SearchError(f"date: {value[:40]!r} is not a FHIR date (e.g. ge2026-12-01 or le2026-12-01T10:00:00Z)")
    prefix, year, month, day, clock = m.group(1) or "eq", int(m.group(2)), m.group(3), m.group(4), m.group(5)
    try:
        if clock:
            text = f"{year:04d}-{month}-{day}{clock}".replace("Z", "+00:00")
            dt = datetime.fromisoformat(text)
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            start = int(dt.timestamp() * 1000)
            # seconds precision covers its whole second; milliseconds its millisecond
            end = start + (1 if "." in clock else 1000)
        elif day:
            start_dt = datetime(year, int(month), int(day), tzinfo=UTC)
            start = int(start_dt.timestamp() * 1000)
            end = start + 86_400_000
        elif month:
            mo = int(month)
            start = int(datetime(year, mo, 1, tzinfo=UTC).timestamp() * 1000)
            nxt = datetime(year + (mo == 12), 1 if mo == 12 else mo + 1, 1, tzinfo=UTC)
            end = int(nxt.timestamp() * 1000)
        else:
            start = int(datetime(year, 1, 1, tzinfo=UTC).timestamp() * 1000)
            end = int(datetime(year + 1, 1, 1, tzinfo=UTC).timestamp() * 1000)
    except (ValueError, OverflowError):
        raise SearchError(f"date: {value[:40]!r} is not a valid date") from None
    return prefix, max(start, 0), max(end, 0)


def _token(name: str, value: str, system: str, kind: str) -> bytes:
    if "|" in value:
        sys_, _, value = value.partition("|")
        if sys_ and sys_ != system:
            raise SearchError(f"{name}: system must be {system}")
    value = value.split("/", 1)[1] if value.startswith(f"{kind}/") else value
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != TOKEN_BYTES:
        raise SearchError(f"{name}: a {kind.lower()} token of {2 * TOKEN_BYTES} hex digits")
    return raw


def _codes(name: str, value: str, system: str) -> list[str]:
    out = []
    for item in value.split(","):
        if "|" in item:
            sys_, _, item = item.partition("|")
            if sys_ and sys_ != system:
                raise SearchError(f"{name}: system must be {system}")
        out.append(item)
    return out


def parse_search(items: list[tuple[str, str]]) -> Search:
    """The request's query items -> Search, or SearchError naming the parameter."""
    if len(items) > MAX_PARAMS:
        raise SearchError(f"at most {MAX_PARAMS} search parameters")
    fields: dict = {}
    since: int | None = None
    until: int | None = None
    types: set[str] | None = None
    outcomes: frozenset[int] | None = None
    count, cursor = DEFAULT_COUNT, None
    seen: set[str] = set()
    for name, value in items:
        if name not in KNOWN:
            raise SearchError(f"{name[:40]}: unknown search parameter; known: {', '.join(sorted(KNOWN))}")
        if len(value) > MAX_VALUE or not value:
            raise SearchError(f"{name}: a value of 1..{MAX_VALUE} characters")
        if name != "date" and name in seen:
            raise SearchError(f"{name}: given twice")
        seen.add(name)
        if name == "date":
            prefix, start, end = _date_range(value)
            lo, hi = {"ge": (start, None), "gt": (end, None), "le": (None, end), "lt": (None, start),
                      "eq": (start, end)}[prefix]
            if lo is not None:
                since = lo if since is None else max(since, lo)
            if hi is not None:
                until = hi if until is None else min(until, hi)
        elif name == "patient":
            fields["patient"] = _token(name, value, PATIENT_SYSTEM, "Patient")
        elif name == "entity":
            fields["study"] = _token(name, value, STUDY_SYSTEM, "Study")
        elif name == "agent":
            if len(value) == 2 * TOKEN_BYTES or "|" in value:
                fields["user"] = _token(name, value, USER_SYSTEM, "User")
            elif len(value) <= 16:
                fields["ae"] = value
            else:
                raise SearchError("agent: a user token (32 hex digits) or an AE title (1..16 characters)")
        elif name == "source":
            if len(value.encode()) > 64:
                raise SearchError("source: a member name of 1..64 characters")
            fields["member"] = value
        elif name == "type":
            wanted: set[str] = set()
            for code in _codes(name, value, DCM):
                if code not in EVENT_TYPES:
                    raise SearchError(f"type: {code[:40]!r} is not a DICOM EventID this ledger records; "
                                      f"one of {', '.join(sorted(EVENT_TYPES))}")
                wanted |= EVENT_TYPES[code]
            types = wanted if types is None else types & wanted
        elif name == "subtype":
            wanted = set(_codes(name, value, TX_TYPE_SYSTEM))
            bad = wanted - TX_TYPES
            if bad:
                raise SearchError(f"subtype: {sorted(bad)[0][:40]!r} is not a RadChain tx type")
            types = wanted if types is None else types & wanted
        elif name == "outcome":
            parts = value.split(",")
            if not all(p in ("0", "4", "8", "12") for p in parts):  # exact codes: no " 4" or Unicode digits
                raise SearchError("outcome: one or more of 0, 4, 8, 12")
            outcomes = frozenset(int(p) for p in parts)
        elif name == "_count":
            if not (value.isascii() and value.isdigit()) or not 0 < int(value) <= MAX_COUNT:
                raise SearchError(f"_count: 1..{MAX_COUNT}")
            count = int(value)
        elif name == "_cursor":
            cursor = value
        elif name == "_format" and value not in ("json", "application/fhir+json", "application/json"):
            raise SearchError("_format: only json is served")
    if types is not None and len(types) == 1:
        fields["type"] = next(iter(types))
    return Search(Filter(fields, since, until), frozenset(types) if types is not None else None, outcomes,
                  count, cursor)


def run_search(store, search: Search) -> tuple[list[tuple[IndexEntry, dict]], str | None]:
    """([(index entry, tx fields)], next cursor or None), oldest first, at most ``count`` entries and at
    most ``count * SCAN_FACTOR`` index entries examined. Empty when the type filters exclude each other."""
    if search.types is not None and not search.types:
        return [], None
    index, key = search.flt.index
    narrowing = (len(search.flt.fields) > (0 if index == "time" else 1) or search.types is not None
                 or search.outcomes is not None)
    count = search.count
    page = count if not narrowing else min(MAX_COUNT, count * 2)
    budget = count * SCAN_FACTOR if narrowing else count
    out: list[tuple[IndexEntry, dict]] = []
    examined = 0
    cursor = search.cursor
    while True:
        try:
            entries, nxt = store.query(index, key, search.flt.since, search.flt.until, cursor, page)
        except StoreError as exc:
            raise SearchError(f"_cursor: {exc}") from None
        for e in entries:
            examined += 1
            rec = store.get_tx(e.tx_hash)
            if rec is not None:
                fields, _sig = stored_tx(rec[2])
                if not narrowing or search.matches(fields):
                    out.append((e, fields))
            if len(out) == count or examined >= budget:
                more = e is not entries[-1] or nxt is not None
                return out, (_cursor(e) if more else None)
        if nxt is None:
            return out, None
        cursor = nxt
