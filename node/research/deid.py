"""De-identification for research exports: DICOM PS3.15 Annex E, Basic Application Level Confidentiality
Profile, with UIDs replaced consistently per project.

Library: dicom-anonymizer (KitwareMedical, PyPI ``dicom-anonymizer`` 2.1, Sep 2026). It is the maintained
Python package that ships Table E.1-1 itself (its DICOM 2026c table: every attribute with its D / Z / X / U
/ Z/D / X/Z / X/D / X/Z/D / X/Z/U* action) and applies it with pydicom, which RadChain already uses. The
alternatives were checked: dicognito keeps private tags and descriptions and has no table of its own;
pydicom/deid's default recipe is a site recipe (remove-all plus pixel filters), not Table E.1-1.

What this module adds around the library (each a gap in it for this use):

* **UIDs.** The library draws random UIDs (a process-global cache): not reproducible across runs and not
  tied to a project. Here every UID the profile replaces becomes ``2.25.<HMAC-SHA256(project key, UID)
  as a 128-bit integer>``, so the same original UID gets the same replacement in every export of the same
  project (series stay series, references stay references) and a different one in another project. The
  per-project key (32 random bytes) is held by the exporting hospital (HOME/keys/research/<project>.key),
  never on chain; without it nobody can test a guessed original UID against a replacement.
* **Everything nested.** The library applies single-tag actions at the top level only. A second pass walks
  every element, sequences included (file meta too): any UID left that is not a DICOM-defined one
  (1.2.840.10008.*) is replaced the same way, every person name (PN) is emptied, private elements are gone.
* **Fail closed.** After de-identification the data set is scanned (every element, every sequence item,
  private tags included) for the original's Patient Name, Patient ID, Birth Date and every original UID;
  any hit, a file with burned-in annotation (BurnedInAnnotation YES: the Clean Pixel Data option is not
  implemented) or an element the library cannot handle refuses the file (DeidError) instead of exporting it.
* **Marking.** PatientIdentityRemoved YES, DeidentificationMethod and the code sequence: 113100 (Basic
  Application Confidentiality Profile). PatientID becomes a per-project pseudonym (``RC-`` + 12 hex of
  HMAC(project key, patient id | issuer)) so a researcher can group a subject's studies within the project.

Profile options (PS3.15 Table E.1-1, columns beyond the Basic Profile): none is retained. No Retain Safe
Private (private elements removed), no Retain UIDs (replaced), no Retain Device Identity, no Retain
Institution Identity, no Retain Patient Characteristics, no Retain Longitudinal Temporal Information
(dates become 00010101 as the library does, times 000000.00), no Clean Descriptors (descriptions are
removed, X, not cleaned), no Clean Structured Content, no Clean Graphics, no Clean Pixel Data (files with
burned-in annotation are refused).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import threading
from collections.abc import Iterator

import pydicom
from dicomanonymizer import simpledicomanonymizer as _lib
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

__all__ = ["DeidError", "Deidentifier", "PROFILE", "iter_elements", "STANDARD_UID_ROOT"]

STANDARD_UID_ROOT = "1.2.840.10008."  # DICOM-defined UIDs (SOP classes, transfer syntaxes): not identifying
LIBRARY = "dicom-anonymizer"
PROFILE = {
    "profile": "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile",
    "code": "113100",
    "table": "E.1-1 (DICOM 2026c, as shipped by dicom-anonymizer)",
    "options_retained": [],
    "uids": "2.25.<HMAC-SHA256(per-project key, original UID), first 128 bits>",
    "private_elements": "removed (no Retain Safe Private Option)",
    "dates": "00010101 (no Retain Longitudinal Temporal Information Option)",
    "descriptors": "removed (no Clean Descriptors Option)",
    "pixel_data": "unchanged; files with BurnedInAnnotation YES are refused (no Clean Pixel Data Option)",
}

# the library's UID hook is a module global; one export at a time may hold it
_UID_HOOK_LOCK = threading.Lock()


class DeidError(ValueError):
    """A file cannot be de-identified safely (it is refused, never exported half-cleaned)."""


def _library_version() -> str:
    try:
        from importlib.metadata import version
        return version("dicom-anonymizer")
    except Exception:  # pragma: no cover - metadata missing in an unusual install
        return "unknown"


def iter_elements(ds: Dataset) -> Iterator[pydicom.DataElement]:
    """Every element of ``ds``, depth first, sequence items included."""
    for elem in ds:
        yield elem
        if elem.VR == "SQ" and isinstance(elem.value, Sequence):
            for item in elem.value:
                yield from iter_elements(item)


def _values(elem) -> list[str]:
    v = elem.value
    if v is None or isinstance(v, (bytes, bytearray, Sequence)):
        return []
    if isinstance(v, (list, tuple, pydicom.multival.MultiValue)):
        return [str(x) for x in v]
    return [str(v)]


class Deidentifier:
    """De-identify data sets for one project with its key."""

    def __init__(self, project: str, key: bytes):
        if len(key) < 32:
            raise ValueError("a project key is at least 32 bytes")
        self.project = project
        self._key = key
        self.library_version = _library_version()

    # ------------------------------------------------------------------ consistent replacements
    def uid(self, original: str) -> str:
        """The project's replacement for ``original`` (a DICOM UID): 2.25.<128-bit HMAC>, at most 44 chars."""
        mac = hmac.new(self._key, b"uid\x00" + original.strip("\x00 ").encode(), hashlib.sha256).digest()
        return "2.25." + str(int.from_bytes(mac[:16], "big"))

    def subject(self, patient_id: str, issuer: str) -> str:
        mac = hmac.new(self._key, b"patient\x00" + patient_id.encode() + b"\x00" + issuer.encode(), hashlib.sha256)
        return "RC-" + mac.hexdigest()[:12].upper()

    # ------------------------------------------------------------------ the profile
    def deidentify(self, blob: bytes, issuer: str) -> bytes:
        """De-identified file bytes for one original DICOM file; DeidError if that cannot be done safely."""
        try:
            ds = pydicom.dcmread(io.BytesIO(blob), force=False)
        except Exception as exc:
            raise DeidError(f"not a readable DICOM file ({exc.__class__.__name__})") from None
        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
            raise DeidError("BurnedInAnnotation is YES: the Clean Pixel Data option is not implemented")
        originals = self._identifiers(ds)
        subject = self.subject(str(ds.get("PatientID", "")), str(ds.get("IssuerOfPatientID", "") or issuer))
        produced: set[str] = set()

        def hook(old: str) -> str:
            if not old or str(old).startswith(STANDARD_UID_ROOT):
                return old
            new = self.uid(str(old))
            produced.add(new)
            return new

        with _UID_HOOK_LOCK:
            saved = _lib.get_UID
            _lib.get_UID = hook  # the library resolves get_UID at call time (module global)
            try:
                _lib.anonymize_dataset(ds, delete_private_tags=True)
            except Exception as exc:  # NotImplementedError for VRs it does not handle, and the like
                raise DeidError(f"de-identification failed ({exc.__class__.__name__}: {exc})") from None
            finally:
                _lib.get_UID = saved
        self._second_pass(ds, produced)
        ds.PatientID = subject
        ds.PatientName = ""
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = (f"RadChain research export {self.project}: PS3.15 E.1-1 Basic Profile "
                                     f"({LIBRARY} {self.library_version}); UIDs keyed per project")[:64]
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator = "113100", "DCM"
        code.CodeMeaning = "Basic Application Confidentiality Profile"
        ds.DeidentificationMethodCodeSequence = Sequence([code])
        if "SOPInstanceUID" in ds:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        # the file is written anew by pydicom: say so (the original's writer is no business of the researcher)
        ds.file_meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
        ds.file_meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]
        leak = self.find_identifiers(ds, originals)
        if leak:
            raise DeidError(f"an original identifier survived in {leak}; file refused")
        out = io.BytesIO()
        try:
            ds.save_as(out, enforce_file_format=True)
        except Exception as exc:  # e.g. an original without SOP Class/Instance UIDs cannot be a valid file
            raise DeidError(f"cannot write the de-identified file ({exc.__class__.__name__}: {exc})") from None
        return out.getvalue()

    def _second_pass(self, ds: Dataset, produced: set[str]) -> None:
        for container in (ds.file_meta, ds) if hasattr(ds, "file_meta") else (ds,):
            for elem in list(iter_elements(container)):
                if elem.tag.is_private:  # remove_private_tags leaves none at the top; nested ones too
                    continue
                if elem.VR == "UI" and elem.tag != 0x00020012:  # ImplementationClassUID names software
                    vals = _values(elem)
                    new = [v if (not v or v.startswith(STANDARD_UID_ROOT) or v in produced) else self.uid(v)
                           for v in vals]
                    produced.update(new)
                    if new != vals:
                        elem.value = new if len(new) > 1 else new[0]
                elif elem.VR == "PN" and elem.value:
                    elem.value = ""
        self._drop_private(ds)

    def _drop_private(self, ds: Dataset) -> None:
        ds.remove_private_tags()
        for elem in ds:
            if elem.VR == "SQ" and isinstance(elem.value, Sequence):
                for item in elem.value:
                    self._drop_private(item)

    @staticmethod
    def _identifiers(ds: Dataset) -> set[str]:
        """The original's identifying values the result must not contain (names, ids, birth date, UIDs)."""
        found = set()
        for name in ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "AccessionNumber"):
            if name in ds:
                found.update(v.strip() for v in _values(ds[name]) if v.strip())
        for elem in iter_elements(ds):
            if elem.VR == "UI":
                found.update(v.strip("\x00 ") for v in _values(elem)
                             if v.strip("\x00 ") and not v.startswith(STANDARD_UID_ROOT))
        return found

    @staticmethod
    def find_identifiers(ds: Dataset, originals: set[str]) -> str | None:
        """The keyword/tag of the first element of ``ds`` (file meta included, every nesting level, private
        elements too) whose value equals, or for values of 6+ characters contains, an original identifier."""
        long_ones = [o for o in originals if len(o) >= 6]
        containers = [ds.file_meta, ds] if hasattr(ds, "file_meta") else [ds]
        for container in containers:
            for elem in iter_elements(container):
                if elem.tag == 0x00020012:
                    continue
                for v in _values(elem):
                    v = v.strip("\x00 ")
                    if v in originals or any(o in v for o in long_ones):
                        return elem.keyword or str(elem.tag)
                raw = elem.value if isinstance(elem.value, (bytes, bytearray)) and elem.tag.is_private else None
                if raw and any(o.encode() in raw for o in long_ones):
                    return elem.keyword or str(elem.tag)
        return None
