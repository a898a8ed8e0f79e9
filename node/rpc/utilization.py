"""``utilization``: what a radiology department's workload looked like, from the consortium's trail.

Params: ``since`` (inclusive) and ``until`` (exclusive), epoch ms or ISO 8601 (default: the last 30 days),
optional ``member`` (one hospital), ``repeat_days`` (default 30). Times are the events' own, in UTC.

Counts (applied txs only): ``studies`` stored (distinct hospital + study with a successful store-like
event: instances.stored, instances.transferred, import), ``instances`` stored, ``reads``
(instances.accessed), ``exports`` (export, deidentified), ``queries`` (query), ``transfers``
(transfer.begin), per hospital, per modality (studies and instances), per weekday (0 = Monday) and per
hour. ``store_to_first_read``: for each study stored in the window and read afterwards at any hospital,
minutes from its first store to its first read (min, median, p90, max, and the list). ``repeat_rate``:
the share of stored studies whose patient had a study of the same modality and body part within
``repeat_days`` before it (what prior-imaging lookups exist to prevent).

The walk reads the time index over the window, at most MAX_SCAN txs (then ``truncated``), in a worker
thread (LevelDB reads are thread-safe) so consensus never waits on a report.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import trio

from node.ledger.intake import EventError, parse_time
from node.rpc.errors import INVALID_PARAMS, RpcError
from node.rpc.protocol import Caller, check_known, param
from node.rpc.render import stored_tx
from node.vocabulary import to_date

STORE_TYPES = frozenset({"instances.stored", "instances.transferred", "import"})
KIND = {"instances.accessed": "reads", "export": "exports", "deidentified": "exports", "query": "queries",
        "transfer.begin": "transfers"}
KINDS = ("studies", "instances", "reads", "exports", "queries", "transfers")
MAX_SCAN = 1_000_000
MAX_READ_TIMES = 10_000  # store-to-first-read samples returned (the statistics use all of them)
PARAMS = frozenset({"since", "until", "member", "repeat_days"})
_limiter = trio.CapacityLimiter(1)  # one report at a time per node: each may read a million txs


async def utilization(node, params: dict, caller: Caller) -> dict:
    check_known(params, PARAMS)
    now = int(time.time() * 1000)
    bounds = []
    for name, default in (("since", now - 30 * 86_400_000), ("until", now + 1)):
        value = param(params, name, (int, str), required=False, default=default)
        try:
            bounds.append(parse_time(value, name))
        except EventError as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None
    if bounds[0] >= bounds[1]:
        raise RpcError(INVALID_PARAMS, "since must be before until")
    member = param(params, "member", str, required=False)
    if member is not None and not 0 < len(member.encode()) <= 64:
        raise RpcError(INVALID_PARAMS, "member must be 1..64 bytes")
    repeat_days = param(params, "repeat_days", int, required=False, default=30)
    if not 0 <= repeat_days <= 3650:
        raise RpcError(INVALID_PARAMS, "repeat_days must be 0..3650")
    return await trio.to_thread.run_sync(
        lambda: compute(node.store, bounds[0], bounds[1], member, repeat_days), limiter=_limiter)


def _day(fields: dict, stored: datetime):
    """The study date, or the store day when absent or not a calendar day (the decoder bounds only the
    integer's range, so a member could record 20261399)."""
    if "study_date" in fields:
        try:
            return to_date(fields["study_date"])
        except ValueError:
            pass
    return stored.date()


def _pct(sorted_values: list[float], q: float) -> float:
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def compute(store, since: int, until: int, member: str | None, repeat_days: int) -> dict:
    by_member: dict[str, dict[str, int]] = {}
    by_modality: dict[str, dict[str, int]] = {}
    by_weekday = {k: [0] * 7 for k in KINDS}
    by_hour = {k: [0] * 24 for k in KINDS}
    first_store: dict[bytes, int] = {}  # study token -> first store time in the window
    first_read: dict[bytes, int] = {}  # study token -> first read time
    seen_studies: set[tuple[str, bytes]] = set()
    kinds_of_study: dict[tuple[str, bytes], tuple] = {}  # (member, study) -> (patient, modality, body, day)
    cursor, scanned, truncated = None, 0, False
    index, key = ("member", member) if member is not None else ("time", b"")
    while True:
        entries, cursor = store.query(index, key, since, until, cursor, 1000)
        for e in entries:
            rec = store.get_tx(e.tx_hash)
            if rec is None:
                continue
            f, _sig = stored_tx(rec[2])
            t = f.get("type")
            dt = datetime.fromtimestamp(e.ts / 1000, UTC)
            m = f.get("member", "?")
            row = by_member.setdefault(m, dict.fromkeys(KINDS, 0))
            if t in STORE_TYPES and f.get("outcome", 0) == 0 and "study" in f:
                study = f["study"]
                n = f.get("n_instances")
                n = n if n is not None else len(f.get("instances", ())) or 1
                kinds = ["instances"]
                modality = f.get("modality", "unknown")
                mod_row = by_modality.setdefault(modality, {"studies": 0, "instances": 0})
                if (m, study) not in seen_studies:
                    seen_studies.add((m, study))
                    kinds.append("studies")
                    mod_row["studies"] += 1
                    day = _day(f, dt)
                    kinds_of_study[(m, study)] = (f.get("patient"), f.get("modality"), f.get("body_part"), day)
                mod_row["instances"] += n
                first_store.setdefault(study, e.ts)
                for k in kinds:
                    amount = n if k == "instances" else 1
                    row[k] += amount
                    by_weekday[k][dt.weekday()] += amount
                    by_hour[k][dt.hour] += amount
            elif t in KIND and f.get("outcome", 0) == 0:
                k = KIND[t]
                row[k] += 1
                by_weekday[k][dt.weekday()] += 1
                by_hour[k][dt.hour] += 1
                if k == "reads" and "study" in f:
                    first_read.setdefault(f["study"], e.ts)
        scanned += len(entries)
        if cursor is None:
            break
        if scanned >= MAX_SCAN:
            truncated = True
            break
    # a read recorded before the store in the window (a study stored earlier) is no store-to-read sample
    minutes = sorted((first_read[s] - t0) / 60_000 for s, t0 in first_store.items()
                     if s in first_read and first_read[s] >= t0)
    read_stats = {"studies": len(minutes)}
    if minutes:
        read_stats.update(min=minutes[0], median=_pct(minutes, 0.5), p90=_pct(minutes, 0.9), max=minutes[-1])
    # repeats within the window's own studies (the consortium-wide check per order is prior_imaging)
    by_kind: dict[tuple, list] = {}
    for patient, modality, body, day in kinds_of_study.values():
        if patient is not None and modality and body:
            by_kind.setdefault((patient, modality, body), []).append(day.toordinal())
    repeated = 0
    for days in by_kind.values():
        days.sort()
        repeated += sum(1 for i in range(1, len(days)) if days[i] - days[i - 1] <= repeat_days)
    n_studies = len(kinds_of_study)
    return {
        "since": since, "until": until, "member": member, "scanned": scanned, "truncated": truncated,
        "by_member": by_member, "by_modality": by_modality, "by_weekday": by_weekday, "by_hour": by_hour,
        "store_to_first_read": {**read_stats, "minutes": minutes[:MAX_READ_TIMES]},
        "repeat_days": repeat_days, "repeat_studies": repeated, "studies": n_studies,
        "repeat_rate": (repeated / n_studies) if n_studies else 0.0,
    }
