"""The CapabilityStatement ``GET /fhir/metadata`` answers: AuditEvent read and search (ITI-81)."""

from __future__ import annotations

_PARAMS = (
    ("date", "date", "event time (AuditEvent.recorded); ge/gt/le/lt/eq, repeatable"),
    ("patient", "reference", "patient token (32 hex digits, or Patient/<token>)"),
    ("entity", "reference", "study token (32 hex digits)"),
    ("agent", "reference", "user token (32 hex digits) or AE title"),
    ("source", "reference", "recording member (hospital) name"),
    ("type", "token", "DICOM EventID, e.g. 110103"),
    ("subtype", "token", "RadChain tx type, e.g. instances.accessed"),
    ("outcome", "token", "0, 4, 8 or 12"),
)
_DATE = "2026-12-01"  # when this statement last changed


def capability_statement(base: str) -> dict:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": _DATE,
        "publisher": "RadChain",
        "kind": "instance",
        "software": {"name": "RadChain"},
        "implementation": {"description": "RadChain node: the consortium's audit ledger as FHIR AuditEvents "
                                          "(IHE ITI-81, shaped by IHE BALP)", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [{
            "mode": "server",
            "security": {"description": "Authorization: Bearer <token with the read role>"},
            "resource": [{
                "type": "AuditEvent",
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "readHistory": False,
                "updateCreate": False,
                "searchParam": [{"name": n, "type": t, "documentation": d} for n, t, d in _PARAMS],
            }],
        }],
    }
