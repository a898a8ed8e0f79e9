"""What the proxy records for one association: a sans-I/O state machine over relayed PDUs.

`AssociationAuditor.feed(direction, pdu_type, pdu)` returns actions for the I/O layer (proxy.py):

* `Prepare(key, fn, stage)`  run fn() in a worker thread now (parse + hash a data set while the PACS
                       works); with `stage`, also durably stage the event stage(result) builds (spool.stage)
* `Commit(key, outcome)`  the PACS answered a staged C-STORE: record its outcome (spool.commit_staged),
                       then relay the response; no fsync on this path (see spool.py "staged events")
* `Emit(keys, build)`  before relaying this PDU, wait for those prepares, spool build(results) (fsync):
                       responses (the source's acknowledgement) are held until their events are durable;
                       build may also return `Journal` records (journaled, not spooled)
* `Journal(record)`    a local-only record (association, peer IP, errors)
* `Reject(pdu, why)`   answer the requestor with this PDU instead of relaying, then close

Direction "up" is requestor -> PACS, "down" is PACS -> requestor. Operations recorded (PS3.4 annexes B, C):
C-STORE (one `instances.stored` per instance, with digests), C-FIND (`query`), C-GET (`instances.accessed`,
sub-operation instances seen on the wire), C-MOVE (`transfer.begin` to the move destination),
C-ECHO (journal only: no patient involved).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from node.dicom import records, ul
from node.dicom.rawdicom import TAGS, inspect_dataset, text, walk_dataset

log = logging.getLogger("radchain.dicom.proxy")

PENDING = (0xFF00, 0xFF01)
_IDENT_TAGS = {TAGS[k] for k in ("PatientID", "IssuerOfPatientID", "StudyInstanceUID", "SeriesInstanceUID",
                                 "SOPInstanceUID", "QueryRetrieveLevel")}
_WILDCARDS = set("*?\\")


@dataclass
class Prepare:
    key: Any
    fn: Callable[[], Any]
    stage: Callable[[Any], dict] | None = None


@dataclass
class Commit:
    key: Any
    outcome: int
    what: str = "C-STORE"


@dataclass
class Emit:
    keys: list
    build: Callable[[dict], list[dict]]   # prepared results (value or exception) -> raw events
    what: str = ""


@dataclass
class Journal:
    record: dict


@dataclass
class Reject:
    pdu: bytes
    reason: str


class StudyDirectory:
    """StudyInstanceUID -> (PatientID, IssuerOfPatientID) learned from traffic, for C-MOVE requests that name
    only a study. Bounded LRU; shared by the proxy's associations."""

    def __init__(self, capacity: int = 100_000):
        self._map: OrderedDict[str, tuple[str | None, str | None]] = OrderedDict()
        self.capacity = capacity

    def learn(self, study: str | None, patient: str | None, issuer: str | None = None) -> None:
        if study and patient:
            self._map[study] = (patient, issuer)
            self._map.move_to_end(study)
            while len(self._map) > self.capacity:
                self._map.popitem(last=False)

    def get(self, study: str | None):
        return self._map.get(study) if study else None


# Identifiers are parsed in worker threads (Prepare), never on the event loop the proxy shares with the
# node when the hook runs inside `radchain start`; each parse also has this time budget.
IDENTIFIER_BUDGET = 2.0  # seconds


def _identifier(data: bytes, ts: str) -> dict:
    """The few keys of a query/retrieve identifier the hook uses; never PatientName."""
    w = walk_dataset(data, ts, _IDENT_TAGS, deadline=time.monotonic() + IDENTIFIER_BUDGET)
    out = {}
    for key in ("PatientID", "IssuerOfPatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                "QueryRetrieveLevel"):
        v = text(w.values.get(TAGS[key]))
        if v is not None:
            out[key] = v
    return out


def _specific(value: str | None) -> str | None:
    """A query key that names one thing (no wildcard, no list, not a range)."""
    if not value or any(c in _WILDCARDS for c in value):
        return None
    return value


@dataclass
class _Op:
    kind: str
    msg_id: int
    subs: list = field(default_factory=list)       # C-GET: (prepare key, status or None)
    sub_status: dict = field(default_factory=dict)  # sub-op message id -> status
    dest: str | None = None
    key: Any = None                                 # find/move: the Prepare parsing the identifier
    match_keys: list = field(default_factory=list)  # find: the Prepares parsing pending answers


class AssociationAuditor:
    def __init__(self, *, peer: str, pacs_aet: str, purpose: str, default_issuer: str,
                 allowed_aets: list[str] | None = None, directory: StudyDirectory | None = None,
                 resolver: Callable[[str], tuple[str | None, str | None]] | None = None,
                 assoc_id: str = ""):
        self.peer = peer
        self.pacs_aet = pacs_aet
        self.purpose = purpose
        self.default_issuer = default_issuer
        self.allowed = set(allowed_aets or [])
        self.directory = directory or StudyDirectory()
        self.resolver = resolver
        self.assoc_id = assoc_id
        self.calling = ""
        self.called = ""
        self.proposed: dict[int, tuple[str, list[str]]] = {}
        self.accepted: dict[int, str] = {}
        self._asm = {"up": ul.MessageAssembler(), "down": ul.MessageAssembler()}
        self._ops: dict[int, _Op] = {}
        self._active_get: _Op | None = None
        self._keys = 0
        self.counts: dict[str, int] = {}
        self.state = "awaiting-request"

    # -- helpers -----------------------------------------------------------------------------------------
    def _key(self, *parts) -> tuple:
        self._keys += 1
        return (*parts, self._keys)

    def _ts(self, ctx_id: int) -> str:
        ts = self.accepted.get(ctx_id)
        if ts is None:
            raise ul.ProtocolError(f"message on presentation context {ctx_id}, which was not accepted")
        return ts

    def _journal(self, what: str, **fields) -> Journal:
        return Journal({"what": what, "assoc": self.assoc_id, "calling_ae": self.calling,
                        "called_ae": self.called, "peer": self.peer, **fields})

    def _common(self):
        return {"actor": self.calling, "purpose": self.purpose, "default_issuer": self.default_issuer}

    # -- entry point -------------------------------------------------------------------------------------
    def feed(self, direction: str, pdu_type: int, pdu: bytes) -> list:
        if pdu_type == ul.A_ASSOCIATE_RQ and direction == "up":
            return self._on_request(pdu)
        if pdu_type == ul.A_ASSOCIATE_AC and direction == "down":
            ac = ul.parse_associate_ac(pdu)
            self.accepted = {cid: ts for cid, (result, ts) in ac.contexts.items() if result == 0 and ts}
            self.state = "established"
            return [self._journal("association-accepted", contexts=len(self.accepted))]
        if pdu_type == ul.A_ASSOCIATE_RJ:
            self.state = "rejected"
            result, source, reason = pdu[7], pdu[8], pdu[9]
            # no AE title or address in the log (PHI side channel, docs/PSEUDONYMS.md): the journal has them
            log.warning("PACS rejected association %s: result %d source %d reason %d",
                        self.assoc_id, result, source, reason)
            return [self._journal("association-rejected-by-pacs", result=result, source=source, reason=reason)]
        if pdu_type == ul.P_DATA_TF:
            if self.state != "established":
                raise ul.ProtocolError("P-DATA-TF before the association was accepted")
            actions = []
            for msg in self._asm[direction].feed(pdu):
                actions += self._on_message(direction, msg)
            return actions
        if pdu_type in (ul.A_RELEASE_RQ, ul.A_RELEASE_RP):
            if pdu_type == ul.A_RELEASE_RP:
                self.state = "released"
                return [self._journal("association-released", operations=self.counts)]
            return []
        if pdu_type == ul.A_ABORT:
            self.state = "aborted"
            return [self._journal("association-aborted", by=("requestor" if direction == "up" else "pacs"),
                                  operations=self.counts, unanswered=len(self._ops))]
        raise ul.ProtocolError(f"{ul.PDU_NAMES.get(pdu_type)} not expected from the "
                               f"{'requestor' if direction == 'up' else 'PACS'}")

    def _on_request(self, pdu: bytes) -> list:
        if self.state != "awaiting-request":
            raise ul.ProtocolError("second A-ASSOCIATE-RQ on one connection")
        rq = ul.parse_associate_rq(pdu)
        self.calling, self.called, self.proposed = rq.calling_ae, rq.called_ae, rq.contexts
        if self.allowed and self.calling not in self.allowed:
            self.state = "rejected"
            reason = f"calling AE title {self.calling!r} is not in [dicom] allowed_aets"
            log.error("rejected association %s: its calling AE title is not in [dicom] allowed_aets "
                      "(the AE title is in spool/journal.jsonl)", self.assoc_id)
            return [self._journal("association-rejected", reason=reason),
                    Reject(ul.associate_rj(1, 1, 3), reason)]
        self.state = "requested"
        return [self._journal("association-requested", contexts=len(rq.contexts))]

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    # -- DIMSE -------------------------------------------------------------------------------------------
    def _on_message(self, direction: str, msg: ul.Message) -> list:
        f = msg.field
        mid = msg.command.get("MessageID")
        rid = msg.command.get("MessageIDBeingRespondedTo")
        if direction == "up" and not msg.is_response:
            self._count(msg.name[:-3])
            ts = self._ts(msg.context_id)
            if f == ul.C_STORE_RQ:
                op = _Op("store", mid, key=self._key("store", mid))
                self._ops[mid] = op
                data = msg.dataset_bytes()
                return [Prepare(op.key, lambda: self._inspect(data, ts), self._stored_event)]
            if f in (ul.C_FIND_RQ, ul.C_GET_RQ, ul.C_MOVE_RQ):
                kind = {ul.C_FIND_RQ: "find", ul.C_GET_RQ: "get", ul.C_MOVE_RQ: "move"}[f]
                op = _Op(kind, mid, dest=msg.command.get("MoveDestination"))
                self._ops[mid] = op
                if kind == "get":
                    # what a C-GET read is taken from the instances seen on the wire, not its identifier
                    self._active_get = op
                    return []
                op.key = self._key("ident", mid)
                data = msg.dataset_bytes()
                return [Prepare(op.key, lambda: self._query(data, ts, resolve=kind == "move"))]
            if f == ul.C_ECHO_RQ:
                return []
            return [self._journal("other-operation", op=msg.name)]
        if direction == "up" and msg.is_response and f == ul.C_STORE_RQ | ul.RESPONSE_BIT:
            # the requestor acknowledging a C-GET sub-operation
            if self._active_get is not None:
                self._active_get.sub_status[rid] = msg.command.get("Status")
            return []
        if direction == "down" and not msg.is_response and f == ul.C_STORE_RQ:
            # a C-GET sub-operation: the PACS sending an instance on this association
            op = self._active_get
            if op is None:
                return [self._journal("unexpected-store-from-pacs")]
            key = self._key("sub", mid)
            op.subs.append((key, mid))
            data, ts = msg.dataset_bytes(), self._ts(msg.context_id)
            return [Prepare(key, lambda: self._inspect(data, ts))]
        if direction == "down" and msg.is_response:
            return self._on_response(msg, rid)
        return [self._journal("unexpected-message", op=msg.name, direction=direction)]

    def _inspect(self, data: bytes, ts: str):
        info = inspect_dataset(data, ts)
        self.directory.learn(info.get("StudyInstanceUID"), info.get("PatientID"), info.get("IssuerOfPatientID"))
        return info

    def _stored_event(self, info) -> dict:
        """The instances.stored event of a C-STORE, outcome still unknown (set when the PACS answers)."""
        return records.stored_event(info, actor_ae=self.calling, peer_ae=self.called, outcome=0, **self._common())

    def _query(self, data: bytes, ts: str, *, resolve: bool) -> dict:
        """Worker thread: parse a request identifier; for a C-MOVE naming no patient, find its patient."""
        query = _identifier(data, ts)
        if resolve and not _specific(query.get("PatientID")):
            query["_resolved"] = self._resolve(_specific(query.get("StudyInstanceUID")))
        return query

    def _match(self, data: bytes, ts: str) -> dict:
        """Worker thread: parse one C-FIND answer and learn its study's patient."""
        match = _identifier(data, ts)
        self.directory.learn(match.get("StudyInstanceUID"), match.get("PatientID"), match.get("IssuerOfPatientID"))
        return match

    def _resolve(self, study: str | None):
        if not study:
            return (None, None)
        hit = self.directory.get(study)
        if hit:
            return hit
        if self.resolver is not None:
            found = self.resolver(study)
            if found and found[0]:
                self.directory.learn(study, *found)
                return found
        return (None, None)

    def _on_response(self, msg: ul.Message, rid: int) -> list:
        status = msg.command.get("Status")
        op = self._ops.get(rid)
        if op is None:
            return [] if msg.field == ul.C_ECHO_RQ | ul.RESPONSE_BIT else [
                self._journal("response-without-request", op=msg.name, status=status)]
        if status in PENDING:
            if op.kind == "find" and msg.dataset:
                key = self._key("match", rid)
                op.match_keys.append(key)
                data, ts = msg.dataset_bytes(), self._ts(msg.context_id)
                return [Prepare(key, lambda: self._match(data, ts))]
            return []
        del self._ops[rid]
        outcome = records.outcome_of(status)
        common = self._common()
        if op.kind == "store":
            return [Commit(op.key, outcome)]
        if op.kind == "find":
            def build(results, op=op, outcome=outcome):
                q = results.get(op.key)
                if not isinstance(q, dict):
                    return []  # malformed identifier: the proxy journals the parse error
                matches = [m for m in (results.get(k) for k in op.match_keys) if isinstance(m, dict)]
                patient = _specific(q.get("PatientID"))
                study = _specific(q.get("StudyInstanceUID"))
                if patient or study:
                    rows = [{"PatientID": patient or self._patient_of(study), "IssuerOfPatientID":
                             q.get("IssuerOfPatientID"), "StudyInstanceUID": study}]
                else:
                    rows = [{k: m.get(k) for k in ("PatientID", "IssuerOfPatientID", "StudyInstanceUID")}
                            for m in matches if m.get("PatientID") or m.get("StudyInstanceUID")]
                events = records.grouped_events("query", rows, actor_ae=self.calling, peer_ae=self.called,
                                                outcome=outcome, action="E", **common)
                if not events:
                    return [self._journal("query-without-patient", level=q.get("QueryRetrieveLevel"),
                                          matches=len(matches), outcome=outcome)]
                return events
            return [Emit([op.key, *op.match_keys], build, "C-FIND")]
        if op.kind == "get":
            self._active_get = None
            subs = list(op.subs)

            def build(results, op=op, subs=subs, outcome=outcome):
                seen = []
                for key, sub_id in subs:
                    info = results.get(key)
                    if isinstance(info, Exception) or info is None:
                        continue
                    if records.outcome_of(op.sub_status.get(sub_id)) == 8:
                        continue  # the requestor did not take it
                    seen.append({**info.fields})
                if not seen:
                    return []
                return records.grouped_events("instances.accessed", seen, actor_ae=self.calling,
                                              peer_ae=self.called, outcome=outcome, action="R", **common)
            return [Emit([k for k, _ in subs], build, "C-GET")]
        if op.kind == "move":
            completed = msg.command.get("NumberOfCompletedSuboperations")
            warned = msg.command.get("NumberOfWarningSuboperations") or 0

            def build(results, op=op, outcome=outcome, completed=completed, warned=warned):
                q = results.get(op.key)
                if not isinstance(q, dict):
                    return []  # malformed identifier: the proxy journals the parse error
                patient, issuer = _specific(q.get("PatientID")), q.get("IssuerOfPatientID")
                found = q.get("_resolved")
                if isinstance(found, tuple):
                    patient, issuer = found
                row = {"PatientID": patient, "IssuerOfPatientID": issuer,
                       "StudyInstanceUID": _specific(q.get("StudyInstanceUID"))}
                if _specific(q.get("SeriesInstanceUID")):
                    row["SeriesInstanceUID"] = q["SeriesInstanceUID"]
                events = records.grouped_events("transfer.begin", [row], actor_ae=self.calling,
                                                peer_ae=op.dest, outcome=outcome, action="E", **common)
                n = (completed or 0) + warned
                for e in events:
                    if n:
                        e["n_instances"] = n
                    else:
                        e.pop("n_instances", None)
                return events
            return [Emit([op.key], build, "C-MOVE")]
        return []

    def _patient_of(self, study: str | None) -> str | None:
        hit = self.directory.get(study)
        return hit[0] if hit else None
