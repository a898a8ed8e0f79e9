"""Helpers for tests/interop: DICOM files with imaging categories, the radchain CLI."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

TODAY = datetime.now(UTC).date()


def _ct_files(out: Path, n: int, *, patient: str, issuer: str, body_part: str, day, modality: str = "CT"):
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    out.mkdir(parents=True)
    base = dcmread(get_testdata_file("CT_small.dcm", download=False))
    study, series = generate_uid(), generate_uid()
    for i in range(n):
        ds = base.copy()
        ds.PatientID, ds.IssuerOfPatientID = patient, issuer
        ds.Modality, ds.BodyPartExamined, ds.StudyDate = modality, body_part, day.strftime("%Y%m%d")
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(out / f"{i:03d}.dcm")
    return study


def radchain(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "node.cli", *args], capture_output=True, text=True, timeout=90)
    if check:
        assert res.returncode == 0, res.stdout + res.stderr
    return res
