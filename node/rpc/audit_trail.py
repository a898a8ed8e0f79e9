"""``audit_trail``: who did what to which study or patient, from the ledger's secondary indexes.

Filters (any combination; the most selective one picks the index, the others are checked on each tx):

- a study: ``study_uid`` (raw DICOM Study Instance UID) or ``study`` (its 32-hex-digit token)
- a patient: ``patient_id`` + ``issuer`` (raw) or ``patient`` (token)
- an actor: ``actor`` (raw user id) or ``user`` (token); ``ae`` (AE title, in clear on the chain)
- ``member`` (submitting hospital), ``type`` (tx type, e.g. ``instances.accessed``)
- ``since`` (inclusive) / ``until`` (exclusive): epoch milliseconds or ISO 8601, on the event's time

Raw identifiers are turned into tokens here: a patient or study by the consortium's threshold OPRF, in
every key epoch this node holds (so one patient's events before and after a key change are one trail), an
actor by this hospital's local key. They are meant for the hospital's own node, and they need an integrator token even where reads are open: without one, anybody
who can reach the port could use the node as an oracle to test guessed patient ids against the chain.

Results are oldest first (event time, then height, then position), ``limit`` per page (default 100, at
most 1000), and ``next_cursor`` continues the listing (``null``: nothing more). When filters are combined
a page may hold fewer than ``limit`` entries while ``next_cursor`` is not null: each call examines a bounded
number of index entries so that its latency stays bounded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace

from node.ledger.intake import EventError, parse_time
from node.ledger.pseudonym import PseudonymError, TokenizeError
from node.ledger.store import SUFFIX, IndexEntry, StoreError
from node.ledger.tx import TOKEN_BYTES, TX_TYPES
from node.rpc.errors import INVALID_PARAMS, UNAUTHORIZED, RpcError
from node.rpc.protocol import Caller, check_known, param
from node.rpc.render import fields_json, stored_tx

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
SCAN_FACTOR = 10  # index entries examined per call, as a multiple of limit, when filters are combined

FILTER_PARAMS = frozenset({"study_uid", "study", "patient_id", "issuer", "patient", "actor", "user", "ae",
                           "member", "type", "since", "until"})
# (tx field, store index) in order of selectivity: a study has a few hundred events, a type millions.
_ORDER = (("study", "study"), ("patient", "patient"), ("user", "actor"), ("ae", "ae"), ("type", "type"),
          ("member", "member"))


@dataclass(frozen=True)
class Filter:
    fields: dict  # tx field -> required value (bytes tokens or str)
    since: int | None
    until: int | None
    # tx field -> tokens of the same identifier in older key epochs, which match as well
    alternatives: dict = dataclasses.field(default_factory=dict)

    @property
    def index(self) -> tuple[str, bytes | str]:
        for field, index in _ORDER:
            if field in self.fields:
                return index, self.fields[field]
        return "time", b""

    def index_keys(self) -> tuple[str, tuple]:
        """(index, every key to read in it): the chosen index's key and its older-epoch alternatives."""
        index, key = self.index
        field = next((f for f, i in _ORDER if i == index), None)
        return index, (key, *self.alternatives.get(field, ()))

    def matches(self, tx_fields: dict) -> bool:
        for k, v in self.fields.items():
            got = tx_fields.get(k)
            if got != v and got not in self.alternatives.get(k, ()):
                return False
        ts = tx_fields.get("ts", 0)
        return (self.since is None or ts >= self.since) and (self.until is None or ts < self.until)


def _token(params: dict, name: str) -> bytes:
    value = param(params, name, str)
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != TOKEN_BYTES:
        raise RpcError(INVALID_PARAMS, f"{name} must be a token of {2 * TOKEN_BYTES} hex digits "
                                       f"(or send the raw identifier to your own node)")
    return raw


async def parse_filter(node, params: dict, caller: Caller) -> Filter:
    """Filter params -> Filter; raw identifiers become tokens (consortium kinds in every epoch held)."""
    fields: dict = {}
    raw_given = [k for k in ("study_uid", "patient_id", "issuer", "actor") if k in params]
    if raw_given and caller.integrator is None:
        raise RpcError(UNAUTHORIZED, f"raw identifiers ({', '.join(raw_given)}) need an integrator token; "
                                     "send tokens (study, patient, user) instead")
    pseudo = node.pseudonymizer
    alternatives: dict = {}

    async def every_epoch(kind: str, *values: str) -> bytes:
        tokens = await node.tokenizer.all_epochs(kind, *values)
        alternatives[kind] = tuple(tokens[1:])
        return tokens[0]

    async def user(value: str) -> bytes:
        return pseudo.user(value)

    try:
        for raw_name, token_name, tokenize in (("study_uid", "study", lambda v: every_epoch("study", v)),
                                               ("actor", "user", user)):
            if raw_name in params and token_name in params:
                raise RpcError(INVALID_PARAMS, f"give {raw_name} or {token_name}, not both")
            if raw_name in params:
                fields[token_name] = await tokenize(param(params, raw_name, str))
            elif token_name in params:
                fields[token_name] = _token(params, token_name)
        if "patient_id" in params or "issuer" in params:
            if "patient" in params:
                raise RpcError(INVALID_PARAMS, "give patient_id + issuer or patient, not both")
            if "patient_id" not in params or "issuer" not in params:
                raise RpcError(INVALID_PARAMS, "a raw patient is patient_id together with issuer "
                                               "(Issuer of Patient ID): ids are only unique per issuer")
            fields["patient"] = await every_epoch("patient", param(params, "patient_id", str),
                                                  param(params, "issuer", str))
        elif "patient" in params:
            fields["patient"] = _token(params, "patient")
    except PseudonymError as exc:
        raise RpcError(INVALID_PARAMS, str(exc)) from None
    except TokenizeError as exc:
        from node.rpc.submit import tokenize_error

        raise tokenize_error(exc) from None
    if "ae" in params:
        fields["ae"] = param(params, "ae", str)
    if "member" in params:
        fields["member"] = param(params, "member", str)
    if "type" in params:
        tx_type = param(params, "type", str)
        if tx_type not in TX_TYPES:
            raise RpcError(INVALID_PARAMS, f"type {tx_type[:64]!r} is not a tx type; one of {', '.join(sorted(TX_TYPES))}")
        fields["type"] = tx_type
    for name in ("ae", "member"):
        if name in fields and not 0 < len(fields[name].encode()) <= 255:
            raise RpcError(INVALID_PARAMS, f"{name} must be 1..255 bytes")
    bounds = []
    for name in ("since", "until"):
        if name not in params:
            bounds.append(None)
            continue
        value = param(params, name, (int, str))
        try:
            bounds.append(parse_time(value, name))
        except EventError as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None
    return Filter(fields, bounds[0], bounds[1], {k: v for k, v in alternatives.items() if v})


# Left out of audit entries: the same on every tx (chain, v) or only needed to re-verify one (nonce,
# signature), which get_tx returns with the receipt. Halves the size of an audit page.
_OMIT = frozenset({"chain", "v", "nonce"})


def entry_json(h: bytes, height: int, index: int, fields: dict) -> dict:
    """One audit entry, built in one pass over the tx's fields (bytes as hex, _OMIT left out): no
    intermediate dict per entry, which a 1,000-entry page would otherwise build and copy twice."""
    return fields_json(fields, {"hash": h.hex(), "height": height, "index": index}, _OMIT)


async def audit_trail(node, params: dict, caller: Caller) -> dict:
    check_known(params, FILTER_PARAMS | {"cursor", "limit"})
    flt = await parse_filter(node, params, caller)
    limit = param(params, "limit", int, required=False, default=DEFAULT_LIMIT)
    if not 0 < limit <= MAX_LIMIT:
        raise RpcError(INVALID_PARAMS, f"limit must be 1..{MAX_LIMIT}")
    cursor = param(params, "cursor", str, required=False)
    return run_audit(node.store, flt, cursor, limit)


def run_audit(store, flt: Filter, cursor: str | None, limit: int) -> dict:
    """One page; an identifier known under several key epochs is one trail (each token's index, merged)."""
    index, key = flt.index
    field_name = next((f for f, i in _ORDER if i == index), None)
    alts = flt.alternatives.get(field_name, ()) if field_name else ()
    if not alts:
        return _run_audit(store, flt, cursor, limit)
    pages = [_run_audit(store, replace(flt, fields={**flt.fields, field_name: k}), cursor, limit)
             for k in (key, *alts)]

    def pos(e: dict) -> tuple:
        return (e.get("ts", 0), e["height"], e["index"])

    # A page cut short (scan budget) only covers the index up to its cursor: merge up to the earliest one.
    horizons = [SUFFIX.unpack(bytes.fromhex(p["next_cursor"])) for p in pages if p["next_cursor"]]
    horizon = min(horizons) if horizons else None
    merged = sorted((e for p in pages for e in p["entries"]), key=pos)
    out = [e for e in merged if horizon is None or pos(e) <= horizon]
    if len(out) > limit:
        out = out[:limit]
        nxt = SUFFIX.pack(*pos(out[-1])).hex()
    else:
        nxt = None if horizon is None else SUFFIX.pack(*horizon).hex()
    return {"entries": out, "next_cursor": nxt, "index": index}


def _run_audit(store, flt: Filter, cursor: str | None, limit: int) -> dict:
    index, key = flt.index
    extra = len(flt.fields) > (0 if index == "time" else 1)
    page = limit if not extra else min(MAX_LIMIT, limit * 2)
    budget = limit * SCAN_FACTOR if extra else limit
    out: list[dict] = []
    examined = 0
    get_tx = store.get_tx
    while True:
        try:
            entries, nxt = store.query(index, key, flt.since, flt.until, cursor, page)
        except StoreError as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None
        for e in entries:
            examined += 1
            rec = get_tx(e.tx_hash)
            if rec is not None:
                fields, _sig = stored_tx(rec[2])
                if not extra or flt.matches(fields):
                    out.append(entry_json(e.tx_hash, e.height, e.index, fields))
            if len(out) == limit or examined >= budget:
                more = e is not entries[-1] or nxt is not None
                return {"entries": out, "next_cursor": _cursor(e) if more else None, "index": index}
        if nxt is None:
            return {"entries": out, "next_cursor": None, "index": index}
        cursor = nxt


def _cursor(e: IndexEntry) -> str:
    return SUFFIX.pack(e.ts, e.height, e.index).hex()
