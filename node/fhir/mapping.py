"""One ledger tx -> one FHIR R4 AuditEvent, shaped by IHE BALP (Basic Audit Log Patterns).

Pure functions over the tx fields as stored (tokens are bytes); no I/O. What goes where:

- ``type``: the DICOM EventID (PS3.15 A.5.3, code system DCM) the tx type stands for (see
  /docs/INTEROP.md and the audit vocabulary table); ``subtype``: the RadChain tx type itself (code system
  ``TX_TYPE_SYSTEM``), plus the DICOM EventTypeCode where one applies (membership changes: 110136).
- ``action``: the tx's EventActionCode (or the type's default); ``outcome``: its EventOutcomeIndicator
  (FHIR R4 uses the same 0/4/8/12 codes); ``recorded``: the event time; ``purposeOfEvent``: HL7 v3
  PurposeOfUse.
- ``agent``: the submitting member (hospital), the user token (the human requestor), the AE title of the
  application and the peer AE title with a DICOM role (Source / Destination) where the type implies one.
- ``source``: the member that recorded it (site and observer).
- ``entity``: the patient token (Person / Patient) and the study token (System Object / Report) with the
  DICOM data life cycle of the type and the instance count (R4 extension NumberOfInstances).

No PHI can appear: the ledger holds only tokens, counts and digests, and nothing else is read here.
"""

from __future__ import annotations

from datetime import UTC, datetime

DCM = "http://dicom.nema.org/resources/ontology/DCM"
TX_TYPE_SYSTEM = "urn:radchain:tx-type"
MEMBER_SYSTEM = "urn:radchain:member"
USER_SYSTEM = "urn:radchain:user-token"
PATIENT_SYSTEM = "urn:radchain:patient-token"
STUDY_SYSTEM = "urn:radchain:study-token"
AE_SYSTEM = "urn:dicom:ae-title"
TX_HASH_SYSTEM = "urn:radchain:tx-hash"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
LIFECYCLE = "http://terminology.hl7.org/CodeSystem/dicom-audit-lifecycle"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
SECURITY_ROLE = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
ROLE_CLASS = "http://terminology.hl7.org/CodeSystem/v3-RoleClass"
EXT_NUMBER_OF_INSTANCES = "http://hl7.org/fhir/StructureDefinition/auditevent-NumberOfInstances"
EXT_ANONYMIZED = "http://hl7.org/fhir/StructureDefinition/auditevent-Anonymized"

EVENT_IDS = {  # DICOM EventID code -> display (PS3.16 DCM)
    "110102": "Begin Transferring DICOM Instances", "110103": "DICOM Instances Accessed",
    "110104": "DICOM Instances Transferred", "110105": "DICOM Study Deleted", "110106": "Export",
    "110107": "Import", "110112": "Query", "110113": "Security Alert",
}
# tx type -> DICOM EventID (docs/INTEROP.md, the table of tx types)
TYPE_EVENT = {
    "instances.stored": "110104", "instances.accessed": "110103", "query": "110112",
    "transfer.begin": "110102", "instances.transferred": "110104", "export": "110106", "import": "110107",
    "study.deleted": "110105", "deidentified": "110106",
    "consent.granted": "110113", "consent.revoked": "110113", "research.access.granted": "110113",
    "member.added": "110113", "member.removed": "110113", "client.added": "110113",
    "client.removed": "110113", "evidence.equivocation": "110113",
    "research.project.registered": "110113", "research.project.approved": "110113", "consent.vote": "110113",
    "member.key_rotated": "110113", "params.changed": "110113",
    "oprf.counts": "110113", "oprf.dealing": "110113", "network.psk_rotated": "110113",
}
EVENT_TYPES: dict[str, frozenset[str]] = {}  # DICOM EventID -> the tx types it stands for
for _t, _c in TYPE_EVENT.items():
    EVENT_TYPES[_c] = EVENT_TYPES.get(_c, frozenset()) | {_t}
del _t, _c
# EventActionCode when the tx does not carry one (node.ledger.intake.DEFAULT_ACTION for events; E for the rest)
_DEFAULT_ACTION = {
    "instances.stored": "C", "instances.accessed": "R", "query": "E", "transfer.begin": "E",
    "instances.transferred": "C", "export": "R", "import": "C", "study.deleted": "D", "deidentified": "R",
}
# DICOM ParticipantObjectDataLifeCycle of the study entity
_LIFECYCLE = {
    "instances.stored": ("2", "Import / Copy from original"), "instances.accessed": ("6", "Access / Use"),
    "transfer.begin": ("10", "Export / Copy to target"), "instances.transferred": ("2", "Import / Copy from original"),
    "export": ("10", "Export / Copy to target"), "import": ("2", "Import / Copy from original"),
    "study.deleted": ("14", "Logical deletion"), "deidentified": ("7", "De-identification"),
}
# role of the peer AE title (DICOM RoleIDCode): who sent to us, or whom we sent to
_PEER_ROLE = {
    "instances.stored": ("110153", "Source Role ID"), "instances.transferred": ("110153", "Source Role ID"),
    "import": ("110155", "Source Media"), "transfer.begin": ("110152", "Destination Role ID"),
    "export": ("110154", "Destination Media"), "deidentified": ("110152", "Destination Role ID"),
    "query": ("110152", "Destination Role ID"),
}
DEFAULT_ACTION, PEER_ROLE = _DEFAULT_ACTION, _PEER_ROLE  # shared with node.reports.atna_syslog
_MEMBERSHIP = frozenset({"member.added", "member.removed", "client.added", "client.removed", "member.key_rotated"})


def iso_ms(ts_ms: int) -> str:
    """Epoch milliseconds -> FHIR instant (UTC, millisecond precision)."""
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def _coding(system: str, code: str, display: str | None = None) -> dict:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def audit_event(tx_hash: bytes, height: int, index: int, fields: dict) -> dict:
    """The AuditEvent (a JSON dict) for one applied tx. ``id`` is the tx hash in hex (64 characters, the
    longest id FHIR allows), so ``GET /fhir/AuditEvent/{id}`` is a store lookup."""
    tx_type = fields["type"]
    event_code = TYPE_EVENT[tx_type]
    member = fields["member"]
    subtype = [_coding(TX_TYPE_SYSTEM, tx_type, tx_type)]
    if tx_type in _MEMBERSHIP:
        subtype.append(_coding(DCM, "110136", "Security Roles Changed"))
    ev: dict = {
        "resourceType": "AuditEvent",
        "id": tx_hash.hex(),
        "type": _coding(DCM, event_code, EVENT_IDS[event_code]),
        "subtype": subtype,
        "action": fields.get("action") or _DEFAULT_ACTION.get(tx_type, "E"),
        "recorded": iso_ms(fields["ts"]),
        "outcome": str(fields.get("outcome", 0)),  # only applied txs are served: 0 unless the event says
    }
    if "purpose" in fields:
        ev["purposeOfEvent"] = [{"coding": [_coding(ACT_REASON, fields["purpose"])]}]

    agents = [{  # the hospital that recorded the event (BALP: the custodian organisation)
        "type": {"coding": [_coding(ROLE_CLASS, "PROV", "healthcare provider")]},
        "who": {"identifier": {"system": MEMBER_SYSTEM, "value": member}, "display": member},
        "requestor": False,
    }]
    user = fields.get("user")
    if user is not None:  # the human (a keyed token: the user's id never leaves the hospital)
        agents.append({"type": {"coding": [_coding(SECURITY_ROLE, "humanuser", "human user")]},
                       "who": {"identifier": {"system": USER_SYSTEM, "value": user.hex()}},
                       "requestor": True})
    if "ae" in fields:  # the application acting for the user (DICOM: Application, AE title as user id)
        agents.append({"type": {"coding": [_coding(DCM, "110150", "Application")]},
                       "who": {"identifier": {"system": AE_SYSTEM, "value": fields["ae"]}},
                       "altId": fields["ae"], "requestor": user is None})
    if "peer_ae" in fields:
        code, display = _PEER_ROLE.get(tx_type, ("110150", "Application"))
        agents.append({"type": {"coding": [_coding(DCM, code, display)]},
                       "who": {"identifier": {"system": AE_SYSTEM, "value": fields["peer_ae"]}},
                       "altId": fields["peer_ae"], "requestor": False})
    ev["agent"] = agents
    ev["source"] = {"site": member,
                    "observer": {"identifier": {"system": MEMBER_SYSTEM, "value": member}, "display": member},
                    "type": [_coding(SOURCE_TYPE, "4", "Application Server")]}

    entities = []
    patient = fields.get("patient")
    if patient is not None:
        entities.append({"what": {"identifier": {"system": PATIENT_SYSTEM, "value": patient.hex()}},
                         "type": _coding(ENTITY_TYPE, "1", "Person"),
                         "role": _coding(OBJECT_ROLE, "1", "Patient")})
    study = fields.get("study")
    if study is not None:
        entity: dict = {"what": {"identifier": {"system": STUDY_SYSTEM, "value": study.hex()}},
                        "type": _coding(ENTITY_TYPE, "2", "System Object"),
                        "role": _coding(OBJECT_ROLE, "3", "Report")}
        if tx_type in _LIFECYCLE:
            entity["lifecycle"] = _coding(LIFECYCLE, *_LIFECYCLE[tx_type])
        ext = []
        if "n_instances" in fields:
            ext.append({"url": EXT_NUMBER_OF_INSTANCES, "valueInteger": fields["n_instances"]})
        if tx_type == "deidentified":
            ext.append({"url": EXT_ANONYMIZED, "valueBoolean": True})
        if ext:
            entity["extension"] = ext
        entities.append(entity)
    detail = [{"type": k, "valueString": fields[k].hex() if isinstance(fields[k], bytes) else fields[k]}
              for k in ("grantee", "scope", "subject") if k in fields]
    if "expires" in fields:
        detail.append({"type": "expires", "valueString": iso_ms(fields["expires"])})
    # where the record lives on the chain (a consumer fetches its Merkle proof with get_tx), and for
    # consent and membership decisions what was decided about whom
    chain_entity: dict = {"what": {"identifier": {"system": TX_HASH_SYSTEM, "value": tx_hash.hex()}},
                          "type": _coding(ENTITY_TYPE, "4", "Other"),
                          "description": f"radchain tx at height {height}, index {index}"}
    if detail:
        chain_entity["detail"] = detail
    entities.append(chain_entity)
    ev["entity"] = entities
    return ev
