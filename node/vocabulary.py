"""The shared audit vocabulary: what an imaging audit event may say, imported by the ledger and the DICOM hook.

Standard library only (the DICOM hook imports nothing else of node/; `make lint` checks it). Three parts:

- Events (DICOM PS3.15 A.5; docs/INTEROP.md and docs/CONTRACTS.md): the raw event types, the DICOM
  EventActionCode each admits and implies, EventOutcomeIndicator codes, and the DICOM EventIDs the ATNA
  receiver turns into events.
- Categories: non-identifying imaging categories recorded with stored instances, for prior-imaging lookups:
  Modality (0008,0060), Body Part Examined (0018,0015) and the study date at day precision (0008,0020).
  These are the only clinical attributes on the chain; none identifies a patient on its own (the patient
  is the keyed token). The raw-event parser (node.ledger.intake) refuses a bad value, naming the field;
  the DICOM hook (node.dicom.records) drops it, since one odd header must not lose the store event.
- Research: consent scopes, HL7 research purposes and their hierarchy, project codes (docs/RESEARCH.md).
"""

from __future__ import annotations

import re
from datetime import date

MAX_CS = 16  # DICOM Code String: at most 16 characters of A-Z, 0-9, space, underscore
_CS = re.compile(r"[A-Z0-9_ ]{1,16}")
MIN_DATE, MAX_DATE = 19000101, 29991231  # study_date as the integer YYYYMMDD (tx field bounds)


# -- events -----------------------------------------------------------------------------------------------
AUDIT_TYPES = (
    "instances.stored", "instances.accessed", "query", "transfer.begin", "instances.transferred", "export",
    "import", "study.deleted", "deidentified",
)
CONSENT_TYPES = ("consent.granted", "consent.revoked", "research.access.granted")
# a member's vote for a consent change only a quorum may make (node.ledger.research)
CONSENT_VOTE_TYPES = ("consent.vote",)
EVENT_TYPES = frozenset(AUDIT_TYPES + CONSENT_TYPES + CONSENT_VOTE_TYPES)  # what a raw event's "type" may be

# DICOM EventOutcomeIndicator (PS3.15 A.5.1): 0 success, 4 minor, 8 serious, 12 major failure.
OUTCOMES = frozenset({0, 4, 8, 12})
# DICOM EventActionCode: Create, Read, Update, Delete, Execute.
ACTIONS = frozenset({"C", "R", "U", "D", "E"})
# EventActionCode a type implies when the event does not say (PS3.15 A.5.3).
DEFAULT_ACTION = {
    "instances.stored": "C", "instances.accessed": "R", "query": "E", "transfer.begin": "E",
    "instances.transferred": "C", "export": "R", "import": "C", "study.deleted": "D", "deidentified": "R",
    "consent.granted": "E", "consent.revoked": "E", "research.access.granted": "E", "consent.vote": "C",
}
# Actions a type admits (instances.accessed covers C/R/U/D per PS3.15 A.5.3.6, transferred C/R/U per A.5.3.7).
ALLOWED_ACTIONS = {
    "instances.stored": frozenset("CU"), "instances.accessed": frozenset("CRUD"), "query": frozenset("E"),
    "transfer.begin": frozenset("E"), "instances.transferred": frozenset("CRU"), "export": frozenset("R"),
    "import": frozenset("C"), "study.deleted": frozenset("D"), "deidentified": frozenset("RC"),
    "consent.granted": frozenset("E"), "consent.revoked": frozenset("E"), "research.access.granted": frozenset("E"),
    "consent.vote": frozenset("CD"),  # grant or revoke
}
# DICOM EventID (PS3.16 DCM) of an audit message -> the event type it becomes. Other EventIDs (application
# activity, logins, security alerts ...) name no patient or study: the ATNA receiver journals them only.
EVENT_ID_TYPES = {
    "110103": "instances.accessed", "110104": "instances.transferred", "110102": "transfer.begin",
    "110112": "query", "110106": "export", "110107": "import", "110105": "study.deleted",
}
assert set(DEFAULT_ACTION) == set(ALLOWED_ACTIONS) == EVENT_TYPES
assert all(DEFAULT_ACTION[t] in ALLOWED_ACTIONS[t] <= ACTIONS for t in EVENT_TYPES)
assert set(EVENT_ID_TYPES.values()) <= EVENT_TYPES


# -- categories -------------------------------------------------------------------------------------------

class CategoryError(ValueError):
    pass


def code_string(value, name: str) -> str:
    """A DICOM CS value (stripped; e.g. 'CT', 'HEAD'), or CategoryError."""
    if not isinstance(value, str):
        raise CategoryError(f"{name}: must be a string")
    v = value.strip(" ")  # DICOM pads to even length with spaces; anything else is refused
    if not _CS.fullmatch(v):  # (match + $ would accept a trailing newline)
        raise CategoryError(f"{name}: a DICOM code string of 1..16 characters A-Z, 0-9, space or _")
    return v


def study_date(value) -> int:
    """'20261102', '2026-11-02' or 20261102 -> 20261102 (a real calendar day), or CategoryError."""
    if type(value) is int:
        text = str(value)
    elif isinstance(value, str):
        text = value.strip(" ").replace("-", "")
    else:
        raise CategoryError("study_date: YYYYMMDD or YYYY-MM-DD")
    if len(text) != 8 or not (text.isascii() and text.isdigit()):  # no Unicode digits
        raise CategoryError("study_date: YYYYMMDD or YYYY-MM-DD")
    n = int(text)
    try:
        date(n // 10000, n // 100 % 100, n % 100)
    except ValueError:
        raise CategoryError(f"study_date: {text} is not a calendar day") from None
    if not MIN_DATE <= n <= MAX_DATE:
        raise CategoryError("study_date: between 1900 and 2999")
    return n


def to_date(n: int) -> date:
    return date(n // 10000, n // 100 % 100, n % 100)


def from_header(info) -> dict:
    """The raw-event category fields a stored instance's header gives (only the valid ones)."""
    out = {}
    for key, name in (("Modality", "modality"), ("BodyPartExamined", "body_part")):
        try:
            out[name] = code_string(info.get(key), name)
        except CategoryError:
            pass
    try:
        out["study_date"] = study_date(info.get("StudyDate"))
    except CategoryError:
        pass
    return out


# -- research: consent scopes, research purposes, project codes (docs/RESEARCH.md) --------------------------
# Scopes and purposes are codes, never free text, so that a validator can decide whether a consent covers
# an export and no clinician's note ends up on the chain.
#
# Purposes are HL7 v3 PurposeOfUse codes (value set 2.16.840.1.113883.1.11.20448, node.ledger.tx.PURPOSES). The
# research ones form a small hierarchy in that code system: HRESCH (healthcare research) is the parent of
# BIORCH, CLINTRCH (with CLINTRCHNPC, CLINTRCHPC), DSRCH, POARCH, PRECLINTRCH and TRANSRCH. A consent given
# for HRESCH covers every research purpose; one given for CLINTRCH covers its two children; otherwise a
# consent covers exactly its own purpose.
#
# Scopes (what part of the patient's record a consent or a project covers) are a small local vocabulary:
#
#     ALL        the whole record held by the consortium
#     IMG        all imaging (every modality)
#     IMG-<M>    imaging of one DICOM modality M (CT, MR, CR, DX, US, NM, PT, MG, XA, RF, OT, SC, SR, RTIMAGE...)
#     RPT        imaging reports
#
# A consent with scope ALL or IMG covers an export of any modality; IMG-<M> covers exports whose recorded
# modality is M. (Kept small on purpose: the cross product modality x body part x dates belongs to the
# project's data scope, which the consent then covers as a whole.)

# HL7 v3 ActReason research codes: child -> parent (HRESCH is the root of the research branch)
_RESEARCH_PARENT = {
    "HRESCH": None, "BIORCH": "HRESCH", "CLINTRCH": "HRESCH", "CLINTRCHNPC": "CLINTRCH",
    "CLINTRCHPC": "CLINTRCH", "DSRCH": "HRESCH", "POARCH": "HRESCH", "PRECLINTRCH": "HRESCH",
    "TRANSRCH": "HRESCH",
}
RESEARCH_PURPOSES = frozenset(_RESEARCH_PARENT)

# DICOM Modality defined terms (PS3.3 C.7.3.1.1.1) a scope may name; a closed list keeps scopes codes.
SCOPE_MODALITIES = ("CT", "MR", "CR", "DX", "US", "NM", "PT", "MG", "XA", "RF", "OT", "SC", "SR", "RTIMAGE",
                    "IO", "PX", "ES", "OP", "SEG", "RTSTRUCT", "RTDOSE", "RTPLAN", "ECG", "XC", "OPT")
SCOPES = frozenset({"ALL", "IMG", "RPT"} | {f"IMG-{m}" for m in SCOPE_MODALITIES})

# The grantee of a broad research consent: any project the consortium approved (with the other checks).
ANY_PROJECT = "ANY-APPROVED-PROJECT"

_PROJECT_CODE = re.compile(r"[A-Z0-9][A-Z0-9._-]{0,31}")


class CodeError(ValueError):
    """A code is not in its vocabulary; the message says which codes are allowed."""


def is_research(purpose: str | None) -> bool:
    return purpose in RESEARCH_PURPOSES


def purpose_covers(consented: str, used: str) -> bool:
    """Whether a consent for purpose ``consented`` covers a use for purpose ``used`` (HL7 hierarchy)."""
    p: str | None = used
    while p is not None:
        if p == consented:
            return True
        p = _RESEARCH_PARENT.get(p)
    return False


def scope_covers(scope: str, modality: str | None) -> bool:
    """Whether a consent of ``scope`` covers imaging of ``modality`` (None: modality not recorded)."""
    if scope in ("ALL", "IMG"):
        return True
    return modality is not None and scope == f"IMG-{modality}"


def check_project_code(code: str) -> str:
    if not isinstance(code, str) or not _PROJECT_CODE.fullmatch(code):
        raise CodeError("project: a project code is 1..32 characters A-Z 0-9 . _ - starting with a letter or digit")
    return code
