"""Raw events (docs/CONTRACTS.md "Raw events") built from what the hook observed. Standard library only.

Field use for DICOM traffic: `actor` and `actor_ae` are the AE title that asked (the calling AE: a modality,
a viewer, a router), `peer_ae` the other side (the PACS, or a C-MOVE destination), `issuer` the
IssuerOfPatientID (0010,0021) or this hospital's configured issuer, `purpose` the configured purpose of use.
Peer IP addresses and association details are not raw-event fields; they go to the spool's local journal.
"""

from __future__ import annotations

import time

from node.dicom.rawdicom import InstanceInfo
from node.vocabulary import from_header

MAX_LIST = 256  # node.ledger.tx.MAX_LIST: UIDs per list in one tx

# DIMSE status (PS3.7 C) -> EventOutcomeIndicator (PS3.15 A.5: 0 success, 4 minor, 8 serious, 12 major)
def outcome_of(status: int | None) -> int:
    if status is None:
        return 8
    if status == 0x0000:
        return 0
    if status == 0x0001 or 0xB000 <= status <= 0xBFFF or status == 0xFE00:  # warning, or cancelled
        return 4
    return 8


def now_ms() -> int:
    return int(time.time() * 1000)


def base_event(kind: str, *, patient_id: str | None, issuer: str | None, study_uid: str | None, actor: str,
               purpose: str, default_issuer: str, when_ms: int | None = None, **extra) -> dict:
    event = {
        "type": kind,
        "patient_id": patient_id or "UNKNOWN",
        "issuer": issuer or default_issuer,
        "actor": actor or "UNKNOWN",
        "purpose": purpose,
        "time": when_ms if when_ms is not None else now_ms(),
    }
    if study_uid:
        event["study_uid"] = study_uid
    for key, value in extra.items():
        if value is not None and value != [] and value != "":
            event[key] = value
    return event


def stored_event(info: InstanceInfo, *, actor: str, actor_ae: str | None, peer_ae: str | None, outcome: int,
                 purpose: str, default_issuer: str, action: str = "C", kind: str = "instances.stored") -> dict:
    """One instance stored (C-STORE through the proxy, Orthanc store, folder import)."""
    return base_event(
        kind, patient_id=info.get("PatientID"), issuer=info.get("IssuerOfPatientID"),
        study_uid=info.get("StudyInstanceUID"), actor=actor, purpose=purpose, default_issuer=default_issuer,
        actor_ae=actor_ae, peer_ae=peer_ae,
        series_uids=[info.get("SeriesInstanceUID")] if info.get("SeriesInstanceUID") else None,
        sop_instance_uids=[info.get("SOPInstanceUID")] if info.get("SOPInstanceUID") else None,
        n_series=1 if info.get("SeriesInstanceUID") else None, n_instances=1,
        digest=info.digest, pixel_digest=info.pixel_digest, outcome=outcome, action=action,
        **from_header(info),  # Modality, Body Part Examined, study date: only valid values (node.vocabulary)
    )


def grouped_events(kind: str, instances: list[dict], *, actor: str, actor_ae: str | None, peer_ae: str | None,
                   outcome: int, purpose: str, default_issuer: str, action: str | None) -> list[dict]:
    """One event per (patient, study) for reads/transfers of many instances. `instances` holds dicts with
    PatientID, IssuerOfPatientID, StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID."""
    groups: dict[tuple, list[dict]] = {}
    for inst in instances:
        key = (inst.get("PatientID"), inst.get("IssuerOfPatientID"), inst.get("StudyInstanceUID"))
        groups.setdefault(key, []).append(inst)
    events = []
    for (patient, issuer, study), members in groups.items():
        # the node takes at most MAX_LIST UIDs per list: a 1,000-instance C-GET is 4 events
        for i in range(0, max(len(members), 1), MAX_LIST):
            chunk = members[i:i + MAX_LIST]
            series = sorted({m["SeriesInstanceUID"] for m in chunk if m.get("SeriesInstanceUID")})
            sops = [m["SOPInstanceUID"] for m in chunk if m.get("SOPInstanceUID")]
            events.append(base_event(
                kind, patient_id=patient, issuer=issuer, study_uid=study, actor=actor, purpose=purpose,
                default_issuer=default_issuer, actor_ae=actor_ae, peer_ae=peer_ae, series_uids=series or None,
                sop_instance_uids=sops or None, n_series=len(series) or None, n_instances=len(sops) or None,
                outcome=outcome, action=action,
            ))
    return events


def unrecordable(event: dict) -> str | None:
    """Why the node would refuse this event for missing identifiers (None when it is fine). Such events go to
    the spool's journal instead, with the reason, so the gap is visible without dead-lettering on the node."""
    if event.get("patient_id") in (None, "", "UNKNOWN"):
        return "no PatientID in the data set, the query or the PACS"
    if event["type"] != "query" and not event.get("study_uid"):
        return "no StudyInstanceUID"
    return None


def event_summary(event: dict) -> dict:
    """What a local record may say about an event it could not record: its type and shape, no identifier
    (no patient, study, series or instance UID, no actor). For journal.jsonl (docs/PSEUDONYMS.md)."""
    return {"type": event.get("type"), "event_id": event.get("event_id"), "outcome": event.get("outcome"),
            "has_patient": event.get("patient_id") not in (None, "", "UNKNOWN"),
            "has_study": bool(event.get("study_uid")), "n_instances": event.get("n_instances")}
