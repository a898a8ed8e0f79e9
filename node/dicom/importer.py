"""Folder import: back-fill an archive's DICOM files into the spool as `instances.stored` events.

Re-importing is idempotent: an instance's event_id derives from this node's name and the instance digest, and
its time from the file's modification time, so the node sees the same tx again and keeps one.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from node.dicom import records
from node.dicom.rawdicom import DicomFormatError, DicomLimitError, inspect_file
from node.dicom.spool import Spool

log = logging.getLogger("radchain.dicom.import")

SPOOL_BATCH = 100  # events per directory fsync


@dataclass
class ImportReport:
    instances: int = 0
    studies: set = field(default_factory=set)
    errors: list[tuple[str, str]] = field(default_factory=list)
    skipped: int = 0


def iter_files(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    for p in map(Path, paths):
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for name in sorted(files):
                    yield Path(root) / name
        else:
            yield p


def read_instance(path: Path):
    """(InstanceInfo, error). The bounded raw walker goes first (it caps inflation and nesting, rawdicom.py):
    pydicom inflates a deflated data set whole and recurses once per sequence level, so it only sees files
    the walker accepted, or says whether a file the walker refused is DICOM at all."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        blob = path.read_bytes()
    except OSError as exc:
        return None, f"unreadable: {exc}"
    try:
        info = inspect_file(blob)
    except DicomLimitError as exc:
        return None, f"malformed DICOM: {exc}"
    except DicomFormatError as exc:
        try:
            dcmread(path, stop_before_pixels=True)
        except InvalidDicomError as exc2:
            return None, f"not a DICOM file: {exc2}"
        except Exception:  # noqa: BLE001 - pydicom's own failure on a file already known to be bad
            pass
        return None, f"malformed DICOM: {exc}"
    try:
        ds = dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - any pydicom failure is this file's, never the import's
        return None, f"unreadable DICOM: {type(exc).__name__}: {exc}"
    if getattr(ds, "DirectoryRecordSequence", None) is not None:
        return None, "DICOMDIR (a media index, not an instance)"
    if not info.get("SOPInstanceUID") or not info.get("StudyInstanceUID"):
        return None, "no SOPInstanceUID/StudyInstanceUID: not a composite instance"
    return info, None


def import_paths(spool: Spool, paths: Iterable[str | os.PathLike], *, node_name: str, actor: str,
                 purpose: str, default_issuer: str) -> ImportReport:
    report = ImportReport()
    batch: list[dict] = []
    for path in iter_files(paths):
        if path.name.upper() == "DICOMDIR":
            report.skipped += 1
            continue
        try:
            info, error = read_instance(path)
        except Exception as exc:  # noqa: BLE001 - one bad file is a counted skip; the import goes on
            info, error = None, f"unreadable: {type(exc).__name__}: {exc}"
        if error:
            log.info("dicom-import: skipped file %d (%s): %s", len(report.errors) + 1, path.name, error)
            report.errors.append((str(path), error))
            continue
        event = records.stored_event(info, actor=actor, actor_ae=None, peer_ae=None, outcome=0, purpose=purpose,
                                     default_issuer=default_issuer)
        why = records.unrecordable(event)
        if why:
            report.errors.append((str(path), why))
            continue
        event["event_id"] = "import-" + hashlib.sha256(f"{node_name}\0{info.digest}".encode()).hexdigest()[:40]
        event["time"] = int(path.stat().st_mtime * 1000)
        batch.append(event)
        report.instances += 1
        report.studies.add(info.get("StudyInstanceUID"))
        if len(batch) >= SPOOL_BATCH:
            spool.put_many(batch, source="dicom-import")
            batch = []
    if batch:
        spool.put_many(batch, source="dicom-import")
    return report
