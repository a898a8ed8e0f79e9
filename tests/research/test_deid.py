"""De-identification (node.research.deid) on pydicom's own test files: no original Patient Name, Patient ID,
Birth Date or UID survives anywhere (every element, sequences, private tags, file meta, raw bytes); UIDs are
replaced consistently within a project and differently across projects; what cannot be cleaned is refused."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node.research.deid import STANDARD_UID_ROOT, Deidentifier, DeidError, iter_elements

TEST_FILES = sorted(Path(get_testdata_file("CT_small.dcm", download=False)).parent.glob("*.dcm"))
# files pydicom ships deliberately broken or without the meta a DICOM file needs: refused, not exported
REFUSABLE = ("not a readable DICOM file", "cannot write the de-identified file")


def _vals(el) -> list[str]:
    v = el.value
    if v is None or isinstance(v, (bytes, bytearray, Sequence)):
        return []
    return [str(x) for x in v] if isinstance(v, (list, tuple, pydicom.multival.MultiValue)) else [str(v)]


def forbidden(ds: Dataset) -> set[str]:
    out = {str(ds.get(k, "")).strip() for k in ("PatientName", "PatientID", "PatientBirthDate")} - {""}
    for el in iter_elements(ds):
        if el.VR == "UI":
            out |= {v.strip("\x00 ") for v in _vals(el) if v.strip("\x00 ") and not v.startswith(STANDARD_UID_ROOT)}
    return out


def leaks(blob: bytes, bad: set[str]) -> list[str]:
    ds = pydicom.dcmread(io.BytesIO(blob))
    hits = []
    for container in (ds.file_meta, ds):
        for el in iter_elements(container):
            if el.tag.is_private:
                hits.append(f"private {el.tag}")
            if el.tag == 0x00020012:  # ImplementationClassUID: the writing software
                continue
            hits += [f"{el.tag} {el.keyword}={v}" for v in _vals(el) if v.strip("\x00 ") in bad]
    hits += [f"bytes {v!r}" for v in bad if len(v) >= 6 and v.encode() in blob]
    return hits


@pytest.fixture(scope="module")
def deid():
    return Deidentifier("LUNG-1", b"\x01" * 32)


@pytest.mark.filterwarnings("ignore")
def test_every_pydicom_test_file_is_cleaned_or_refused(deid):
    cleaned = 0
    for path in TEST_FILES:
        blob = path.read_bytes()
        try:
            out = deid.deidentify(blob, "HOSP-A")
        except DeidError as exc:
            assert str(exc).startswith(REFUSABLE), (path.name, str(exc))
            continue
        original = pydicom.dcmread(io.BytesIO(blob))
        assert leaks(out, forbidden(original)) == [], path.name
        clean = pydicom.dcmread(io.BytesIO(out))
        assert clean.PatientIdentityRemoved == "YES"
        assert clean.PatientID.startswith("RC-") and not clean.PatientName
        assert deid.deidentify(blob, "HOSP-A") == out  # deterministic: same project key, same bytes
        cleaned += 1
    assert cleaned >= 60, cleaned  # of 78; the rest are files pydicom ships broken on purpose


@pytest.mark.filterwarnings("ignore")
def test_uids_are_consistent_within_a_project_and_differ_across_projects(deid):
    a, b = (Path(get_testdata_file(n, download=False)) for n in ("JPEG2000.dcm", "JPEG-lossy.dcm"))
    da, db = (pydicom.dcmread(p) for p in (a, b))
    assert da.StudyInstanceUID == db.StudyInstanceUID  # one study in two files
    ca, cb = (pydicom.dcmread(io.BytesIO(deid.deidentify(p.read_bytes(), "H"))) for p in (a, b))
    assert ca.StudyInstanceUID == cb.StudyInstanceUID == deid.uid(da.StudyInstanceUID)
    assert ca.StudyInstanceUID.startswith("2.25.") and len(ca.StudyInstanceUID) <= 64
    assert ca.SOPInstanceUID != cb.SOPInstanceUID
    assert ca.file_meta.MediaStorageSOPInstanceUID == ca.SOPInstanceUID
    other = Deidentifier("OTHER-2", b"\x02" * 32)
    co = pydicom.dcmread(io.BytesIO(other.deidentify(a.read_bytes(), "H")))
    assert co.StudyInstanceUID != ca.StudyInstanceUID
    assert ca.PatientID == cb.PatientID != co.PatientID  # per-project subject pseudonym


def _crafted(burned: str = "NO") -> bytes:
    """A data set hiding identifiers where a top-level-only tool misses them."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = (generate_uid() for _ in range(3))
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Hidden^Alice", "HID-778899", "19620304"
    ds.BurnedInAnnotation = burned
    item = Dataset()  # an unlisted standard sequence: Procedure Code Sequence
    item.CodeValue, item.CodingSchemeDesignator = "CT01", "L"
    item.add_new(0x0040A123, "PN", "Hidden^Alice")          # Person Name inside it
    item.add_new(0x00081155, "UI", ds.SOPInstanceUID)       # a reference to the original instance
    ds.ProcedureCodeSequence = Sequence([item])
    priv = Dataset()
    priv.add_new(0x00100020, "LO", "HID-778899")
    ds.private_block(0x0011, "ACME 1.0", create=True).add_new(0x01, "SQ", Sequence([priv]))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_identifiers_hidden_in_sequences_and_private_elements_are_removed(deid):
    blob = _crafted()
    bad = forbidden(pydicom.dcmread(io.BytesIO(blob)))
    assert {"Hidden^Alice", "HID-778899", "19620304"} <= bad
    out = deid.deidentify(blob, "HOSP-A")
    assert leaks(out, bad) == []


def test_burned_in_annotation_is_refused(deid):
    with pytest.raises(DeidError, match="BurnedInAnnotation"):
        deid.deidentify(_crafted("YES"), "HOSP-A")
    with pytest.raises(DeidError, match="not a readable DICOM file"):
        deid.deidentify(b"\x00" * 200, "HOSP-A")
