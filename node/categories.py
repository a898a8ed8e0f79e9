"""Non-identifying imaging categories recorded with stored instances, for prior-imaging lookups:
Modality (0008,0060), Body Part Examined (0018,0015) and the study date at day precision (0008,0020).

These are the only clinical attributes on the chain; none identifies a patient on its own (the patient is
the keyed token). Shared by the raw-event parser (node.events: refuse a bad value, naming the field) and
the DICOM hook (node.dicom.records: drop a bad value, since one odd header must not lose the store event).
"""

from __future__ import annotations

import re
from datetime import date

MAX_CS = 16  # DICOM Code String: at most 16 characters of A-Z, 0-9, space, underscore
_CS = re.compile(r"[A-Z0-9_ ]{1,16}")
MIN_DATE, MAX_DATE = 19000101, 29991231  # study_date as the integer YYYYMMDD (tx field bounds)


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
