"""Codes for research sharing: consent scopes, research purposes of use, project codes.

Scopes and purposes are codes, never free text, so that a validator can decide whether a consent covers an
export and so that no clinician's note ends up on the chain.

Purposes are HL7 v3 PurposeOfUse codes (value set 2.16.840.1.113883.1.11.20448, node.tx.PURPOSES). The
research ones form a small hierarchy in that code system: HRESCH (healthcare research) is the parent of
BIORCH, CLINTRCH (with CLINTRCHNPC, CLINTRCHPC), DSRCH, POARCH, PRECLINTRCH and TRANSRCH. A consent given
for HRESCH covers every research purpose; one given for CLINTRCH covers its two children; otherwise a
consent covers exactly its own purpose.

Scopes (what part of the patient's record a consent or a project covers) are a small local vocabulary:

    ALL        the whole record held by the consortium
    IMG        all imaging (every modality)
    IMG-<M>    imaging of one DICOM modality M (CT, MR, CR, DX, US, NM, PT, MG, XA, RF, OT, SC, SR, RTIMAGE...)
    RPT        imaging reports

A consent with scope ALL or IMG covers an export of any modality; IMG-<M> covers exports whose recorded
modality is M. (Kept small on purpose: the cross product modality x body part x dates belongs to the
project's data scope, which the consent then covers as a whole.)
"""

from __future__ import annotations

import re

__all__ = ["RESEARCH_PURPOSES", "SCOPES", "SCOPE_MODALITIES", "is_research", "purpose_covers",
           "scope_covers", "check_project_code", "ANY_PROJECT", "CodeError"]

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
