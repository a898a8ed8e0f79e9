"""``prior_imaging``: a patient's prior studies anywhere in the consortium, and its repeat studies.

Params: the patient as ``patient_id`` + ``issuer`` (raw: tokenized by this node, integrator token needed,
as for audit_trail) or ``patient`` (token); optional ``modality`` and ``body_part`` (DICOM code strings,
exact), ``within_days`` (study date no older than that many days before ``now``), ``repeat_days`` (window
of the redundancy report, default 30) and ``now`` (epoch ms or ISO 8601; default the node's clock).

A study is a (hospital, study token) with at least one successful store-like event (instances.stored,
instances.transferred, import): its date is the recorded study date (day precision) or else the day of its
first store, its modality and body part the recorded categories, its instance count the sum of the events'
n_instances (or their instance lists, or 1 each). Reads walk only the patient's ``patient_stored`` index
(the patient's successful store-like events; node.ledger.store), or the whole ``patient`` index on a store older
than it, at most MAX_SCAN entries; past that ``truncated`` is true.

``repeats``: pairs of different studies with the same modality and body part whose dates are at most
``repeat_days`` apart (``cross_hospital``: at different members): the scan nobody needed to repeat.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import trio

from node.ledger.intake import EventError, parse_time
from node.ledger.store import STORED_TYPES, StoreError
from node.rpc.audit_trail import parse_filter
from node.rpc.errors import INVALID_PARAMS, RpcError
from node.rpc.protocol import Caller, check_known, param
from node.rpc.render import stored_tx
from node.vocabulary import CategoryError, code_string, to_date

STORE_TYPES = STORED_TYPES
MAX_SCAN = 200_000  # index entries per call: bounds the latency of one lookup
LAST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_prior_limiter = trio.CapacityLimiter(2)  # lookups in worker threads at once (each bounded by MAX_SCAN)
MAX_DAYS = 365 * 200
MAX_REPEATS = 1000  # pairs listed at most (a pathological history could make n^2 of them)
DAY_MS = 86_400_000
PARAMS = frozenset({"patient_id", "issuer", "patient", "modality", "body_part", "within_days", "repeat_days",
                    "now"})


def _days(params: dict, name: str, default: int | None) -> int | None:
    value = param(params, name, int, required=False, default=default)
    if value is not None and not 0 <= value <= MAX_DAYS:
        raise RpcError(INVALID_PARAMS, f"{name} must be 0..{MAX_DAYS}")
    return value


async def prior_imaging(node, params: dict, caller: Caller) -> dict:
    check_known(params, PARAMS)
    who = {k: params[k] for k in ("patient_id", "issuer", "patient") if k in params}
    if not who:
        raise RpcError(INVALID_PARAMS, "give the patient: patient_id + issuer, or patient (token)")
    flt = await parse_filter(node, who, caller)
    patient, also = flt.fields["patient"], tuple(flt.alternatives.get("patient", ()))
    wanted = {}
    try:
        for name in ("modality", "body_part"):
            if name in params:
                wanted[name] = code_string(param(params, name, str), name)
    except CategoryError as exc:
        raise RpcError(INVALID_PARAMS, str(exc)) from None
    within = _days(params, "within_days", None)
    repeat_days = _days(params, "repeat_days", 30)
    now = int(time.time() * 1000)
    if "now" in params:
        try:
            now = parse_time(param(params, "now", (int, str)), "now")
        except EventError as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None
        if now > LAST_MS:  # datetime cannot go past year 9999
            raise RpcError(INVALID_PARAMS, "now: must be before the year 10000")
    # Up to MAX_SCAN index entries and tx reads: off the event loop, which consensus shares.
    return await trio.to_thread.run_sync(prior_studies, node.store, patient, wanted, within, repeat_days, now,
                                         also, limiter=_prior_limiter)


def prior_studies(store, patient: bytes, wanted: dict, within_days: int | None, repeat_days: int,
                  now_ms: int, also: tuple[bytes, ...] = ()) -> dict:
    """`also`: the patient's tokens in older key epochs (one patient, one list of priors)."""
    since_day = None
    since_ms = None
    if within_days is not None:
        since_day = (datetime.fromtimestamp(now_ms / 1000, UTC) - timedelta(days=within_days)).date()
        # a study is stored on or after its own date: older stores cannot hold a study that recent,
        # except imports of old studies, which the date check below handles
        since_ms = max(0, now_ms - (within_days + 1) * DAY_MS)
    studies: dict[tuple[str, bytes], dict] = {}
    cursor, scanned, truncated = None, 0, False
    index = "patient_stored" if getattr(store, "has_patient_stored_index", False) else "patient"
    keys = [patient, *also]
    key = keys.pop(0)
    while True:
        try:
            entries, cursor = store.query(index, key, since_ms, None, cursor, 1000)
        except StoreError as exc:  # cannot happen for a token we made; keep the error typed
            raise RpcError(INVALID_PARAMS, str(exc)) from None
        for e in entries:
            rec = store.get_tx(e.tx_hash)
            if rec is not None:
                _add_store(studies, stored_tx(rec[2])[0], e.ts)
        scanned += len(entries)
        if cursor is None:
            if not keys:
                break
            key = keys.pop(0)
            continue
        if scanned >= MAX_SCAN:
            truncated = True
            break
    out = _studies_out(_merge_epochs(studies), since_day, wanted)
    return {"patient": patient.hex(), "studies": out, "repeats": repeats(out, repeat_days),
            "truncated": truncated}


def _add_store(studies: dict, fields: dict, ts: int) -> bool:
    """Fold one stored-instances event into ``studies`` ((member, study) -> study); False if not one."""
    if fields.get("type") not in STORE_TYPES or fields.get("outcome", 0) != 0 or "study" not in fields:
        return False
    key = (fields["member"], fields["study"])
    s = studies.get(key)
    if s is None:
        s = studies[key] = {"member": key[0], "study": key[1].hex(), "study_date": None,
                            "modality": set(), "body_part": set(), "instances": 0,
                            "first_stored": ts, "last_stored": ts}
    # what ties one hospital's study across key epochs: its local series/instance tokens (the hospital's
    # local key has no epoch) and the content digests; the study token itself changes with the epoch
    s.setdefault("links", set()).update(fields.get("series", ()), fields.get("instances", ()))
    for name in ("digest", "pixel_digest"):
        if name in fields:
            s["links"].add(fields[name])
    s["last_stored"] = max(s["last_stored"], ts)
    s["first_stored"] = min(s["first_stored"], ts)
    if "study_date" in fields and s["study_date"] is None:
        s["study_date"] = fields["study_date"]
    for name in ("modality", "body_part"):
        if name in fields:
            s[name].add(fields[name])
    n = fields.get("n_instances")
    s["instances"] += n if n is not None else len(fields.get("instances", ())) or 1
    return True


def _merge_epochs(studies: dict) -> dict:
    """One study of one hospital recorded under two key epochs (two study tokens, epoch-prefixed) is one
    prior: entries of one member whose tokens have different epochs and that share a series or instance
    token or a content digest are folded into the newest epoch's entry."""
    by_member: dict[str, list[tuple[str, bytes]]] = {}
    for key in studies:
        by_member.setdefault(key[0], []).append(key)
    for keys in by_member.values():
        if len({k[1][:2] for k in keys}) < 2:
            continue  # one epoch: tokens are already one per study
        keys.sort(key=lambda k: k[1][:2], reverse=True)  # newest epoch first: it absorbs the older ones
        for i, newer in enumerate(keys):
            a = studies.get(newer)
            if a is None:
                continue
            for older in keys[i + 1:]:
                b = studies.get(older)
                if b is None or older[1][:2] == newer[1][:2] or not (a["links"] & b["links"]):
                    continue
                a["links"] |= b["links"]
                a["first_stored"] = min(a["first_stored"], b["first_stored"])
                a["last_stored"] = max(a["last_stored"], b["last_stored"])
                a["study_date"] = a["study_date"] or b["study_date"]
                a["modality"] |= b["modality"]
                a["body_part"] |= b["body_part"]
                a["instances"] += b["instances"]
                a.setdefault("earlier_tokens", []).append(b["study"])
                del studies[older]
    return studies


def _studies_out(studies: dict, since_day, wanted: dict) -> list[dict]:
    out = []
    for s in studies.values():
        try:
            day = to_date(s["study_date"]) if s["study_date"] else None
        except ValueError:  # a member recorded a nonsense date: fall back to the store day
            day = None
        if day is None:
            day = datetime.fromtimestamp(s["first_stored"] / 1000, UTC).date()
        if since_day is not None and day < since_day:
            continue
        if any(wanted[k] not in s[k] for k in wanted):
            continue
        out.append({"member": s["member"], "study": s["study"], "date": day.isoformat(),
                    "modality": sorted(s["modality"]), "body_part": sorted(s["body_part"]),
                    "instances": s["instances"], "first_stored": s["first_stored"], "last_stored": s["last_stored"]})
        if s.get("earlier_tokens"):  # the same study under older key epochs' tokens
            out[-1]["earlier_tokens"] = sorted(s["earlier_tokens"])
    out.sort(key=lambda s: (s["date"], s["first_stored"]), reverse=True)  # newest first: what an orderer needs
    return out


def repeats(studies: list[dict], within_days: int) -> list[dict]:
    """Pairs of studies with a common (modality, body part) and dates at most within_days apart."""
    by_kind: dict[tuple[str, str], list[dict]] = {}
    for s in studies:
        for m in s["modality"]:
            for b in s["body_part"]:
                by_kind.setdefault((m, b), []).append(s)
    out: list[dict] = []
    for (m, b), group in sorted(by_kind.items()):
        group = sorted(group, key=lambda s: (s["date"], s["first_stored"]))
        days = [datetime.fromisoformat(s["date"]).toordinal() for s in group]
        for i, later in enumerate(group):
            for j in range(i - 1, -1, -1):  # dates ascending: stop at the first one too far back
                gap = days[i] - days[j]
                if gap > within_days:
                    break
                earlier = group[j]
                out.append({"modality": m, "body_part": b, "days_apart": gap,
                            "cross_hospital": earlier["member"] != later["member"],
                            "first": {k: earlier[k] for k in ("member", "study", "date")},
                            "repeat": {k: later[k] for k in ("member", "study", "date")}})
                if len(out) >= MAX_REPEATS:
                    return out
    return out


# ---------------------------------------------------------------------------------------------- redundancy

REDUNDANCY_PARAMS = frozenset({"since", "until", "within_days", "modality", "body_part", "cross_hospital"})
REDUNDANCY_MAX_SCAN = 1_000_000  # stored-instance events read per report (then ``truncated``)
_redundancy_limiter = trio.CapacityLimiter(1)  # one report at a time per node: each may read a million txs


async def redundancy(node, params: dict, caller: Caller) -> dict:
    """Consortium-wide repeat studies: the same patient (token), modality and body part, dated at most
    ``within_days`` apart (default 30), among the studies stored between ``since`` (default 365 days ago)
    and ``until`` (default now); ``cross_hospital`` true lists only pairs at different members. Tokens only:
    the ledger holds no raw identifiers, and this reads nothing else."""
    check_known(params, REDUNDANCY_PARAMS)
    now = int(time.time() * 1000)
    bounds = []
    for name, default in (("since", now - 365 * DAY_MS), ("until", now + 1)):
        try:
            bounds.append(parse_time(param(params, name, (int, str), required=False, default=default), name))
        except EventError as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None
    if bounds[0] >= bounds[1]:
        raise RpcError(INVALID_PARAMS, "since must be before until")
    within = _days(params, "within_days", 30)
    wanted = {}
    try:
        for name in ("modality", "body_part"):
            if name in params:
                wanted[name] = code_string(param(params, name, str), name)
    except CategoryError as exc:
        raise RpcError(INVALID_PARAMS, str(exc)) from None
    cross = param(params, "cross_hospital", bool, required=False, default=False)
    return await trio.to_thread.run_sync(
        lambda: redundancy_report(node.store, bounds[0], bounds[1], within, wanted, cross),
        limiter=_redundancy_limiter)


def redundancy_report(store, since_ms: int, until_ms: int, within_days: int, wanted: dict,
                      cross_only: bool = False, max_scan: int = REDUNDANCY_MAX_SCAN) -> dict:
    by_patient: dict[bytes, dict] = {}
    scanned, truncated = 0, False
    for tx_type in sorted(STORE_TYPES):  # the type index: only stored-instance events are read
        cursor = None
        while not truncated:
            entries, cursor = store.query("type", tx_type, since_ms, until_ms, cursor, 1000)
            for e in entries:
                rec = store.get_tx(e.tx_hash)
                if rec is None:
                    continue
                fields = stored_tx(rec[2])[0]
                patient = fields.get("patient")
                if isinstance(patient, bytes):
                    _add_store(by_patient.setdefault(patient, {}), fields, e.ts)
            scanned += len(entries)
            if cursor is None:
                break
            if scanned >= max_scan:
                truncated = True
    pairs: list[dict] = []
    n_studies = 0
    listed_all = True
    for patient in sorted(by_patient):
        studies = _studies_out(by_patient[patient], None, wanted)
        n_studies += len(studies)
        for r in repeats(studies, within_days):
            if cross_only and not r["cross_hospital"]:
                continue
            if len(pairs) >= MAX_REPEATS:
                listed_all = False
                break
            pairs.append({"patient": patient.hex(), **r})
    # newest repeat first: the scans most worth a look are the recent ones
    pairs.sort(key=lambda r: (r["repeat"]["date"], r["patient"], r["first"]["date"]), reverse=True)
    kinds: dict[str, int] = {}
    for r in pairs:
        kinds[f"{r['modality']} {r['body_part']}"] = kinds.get(f"{r['modality']} {r['body_part']}", 0) + 1
    return {"since": since_ms, "until": until_ms, "within_days": within_days, "scanned": scanned,
            "truncated": truncated, "patients": len(by_patient), "studies": n_studies,
            "repeats": pairs, "listed_all": listed_all,
            "cross_hospital": sum(r["cross_hospital"] for r in pairs), "by_kind": dict(sorted(kinds.items()))}
