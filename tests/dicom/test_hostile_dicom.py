"""Hostile DICOM (issue 10 item 4): deflate bombs, deep nesting and truncated files give DicomFormatError
within bounded time and memory, in the walkers, the UL command parser, split_file and dicom-import."""

from __future__ import annotations

import json
import resource
import time
import tracemalloc

import pytest
from dicom_helpers import (
    DEFLATED_LE,
    RADCHAIN,
    deflate_bomb,
    dicom_file,
    ident_elements,
    make_instances,
    nested_sequences,
    run_tool,
    truncated_meta_file,
    write_home,
)

from node.dicom import rawdicom, ul
from node.dicom.rawdicom import DicomFormatError, DicomLimitError


@pytest.fixture(scope="module")
def bomb():
    return deflate_bomb()


def _bounded(fn, *, seconds: float = 5.0, mib: int = 200):
    """Run fn, which must raise DicomFormatError; return the error after checking time and peak memory."""
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(DicomFormatError) as info:
            fn()
        took = time.monotonic() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert took < seconds, f"took {took:.1f}s"
    assert peak < mib << 20, f"peak {peak >> 20} MiB"
    return info.value


def test_deflate_bomb_is_capped(bomb):
    assert len(bomb) < 250_000  # 200 MiB inflated
    for fn in (lambda: rawdicom.inspect_dataset(bomb, DEFLATED_LE), lambda: rawdicom.walk_dataset(bomb, DEFLATED_LE),
               lambda: rawdicom.canonical_digest(bomb, DEFLATED_LE),
               lambda: rawdicom.inspect_file(dicom_file(bomb, DEFLATED_LE))):
        err = _bounded(fn, mib=2 * (rawdicom.MAX_INFLATED >> 20) + 16)
        assert isinstance(err, DicomLimitError) and "64 MiB cap" in str(err)
    # under the cap, deflate still works
    import zlib
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    small = c.compress(ident_elements()) + c.flush()
    assert rawdicom.inspect_dataset(small, DEFLATED_LE).get("PatientID") == "RC-BOMB-1"


@pytest.mark.parametrize("explicit", [True, False])
def test_3000_nested_sequences_are_a_format_error_not_recursion(explicit):
    ts = rawdicom.EXPLICIT_LE if explicit else rawdicom.IMPLICIT_LE
    data = ident_elements() + nested_sequences(3000, explicit=explicit) if explicit else nested_sequences(3000, False)
    for fn in (lambda: rawdicom.inspect_dataset(data, ts), lambda: rawdicom.walk_dataset(data, ts),
               lambda: rawdicom.canonical_digest(data, ts)):
        assert "nested deeper than 64" in str(_bounded(fn, seconds=2))
    # the DIMSE command parser (implicit VR, and without closing delimiters: 48 KB like the report's 60 KB)
    cmd = nested_sequences(3000, explicit=False, close=False)
    assert len(cmd) < ul.MAX_COMMAND
    assert "nested deeper" in str(_bounded(lambda: ul.parse_command(cmd), seconds=2))
    # 64 levels are still fine
    ok = ident_elements() + nested_sequences(rawdicom.MAX_NESTING)
    assert rawdicom.inspect_dataset(ok, rawdicom.EXPLICIT_LE).get("PatientID") == "RC-BOMB-1"


def test_truncated_meta_and_time_budget():
    with pytest.raises(DicomFormatError, match="truncated file meta element"):
        rawdicom.split_file(truncated_meta_file())
    for cut in range(132, 160):
        with pytest.raises(DicomFormatError):
            rawdicom.inspect_file(dicom_file(ident_elements(), rawdicom.EXPLICIT_LE)[:cut])
    many = ident_elements() * 1 + b"".join(rawdicom.struct.pack("<HH2sH", 0x0009, 0x1000 + (i % 0xEFFF), b"LO", 0)
                                           for i in range(200_000))
    with pytest.raises(DicomLimitError, match="time budget"):
        rawdicom.walk_dataset(many, rawdicom.EXPLICIT_LE, deadline=time.monotonic() + 0.01)
    assert rawdicom.walk_dataset(many, rawdicom.EXPLICIT_LE, deadline=time.monotonic() + 60).end == len(many)


def test_dicom_import_skips_and_counts_bad_files_and_goes_on(bomb, tmp_path):
    """One bad file per kind between good ones: each a logged, counted skip; the good files are spooled;
    the whole import stays within bounded time and memory (the child's peak RSS)."""
    home = write_home(tmp_path / "home", None, None)
    src = tmp_path / "archive"
    files, study = make_instances(src / "a", 2, patient_id="RC-IMPORT-BAD")
    (src / "a" / "inst_0000b_bomb.dcm").write_bytes(dicom_file(bomb, DEFLATED_LE))
    (src / "a" / "inst_0000c_nested.dcm").write_bytes(
        dicom_file(ident_elements() + nested_sequences(3000), rawdicom.EXPLICIT_LE))
    (src / "a" / "inst_0000d_truncated_meta.dcm").write_bytes(truncated_meta_file())
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.monotonic()
    proc = run_tool([RADCHAIN, "dicom-import", "--home", str(home), "--no-deliver", str(src)], check=False,
                    timeout=120)
    took = time.monotonic() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "spooled 2 instance(s) of 1 study(ies); 3 file(s) skipped" in proc.stdout, proc.stdout + proc.stderr
    err = proc.stderr
    assert "inst_0000b_bomb.dcm: malformed DICOM: deflated data set inflates past the 64 MiB cap" in err
    assert "inst_0000c_nested.dcm: malformed DICOM: sequences nested deeper than 64 levels" in err
    assert "inst_0000d_truncated_meta.dcm: malformed DICOM: truncated file meta element" in err
    assert "Traceback" not in err and "RecursionError" not in err
    events = [json.loads(p.read_bytes())["event"] for p in (home / "spool" / "pending").glob("*.json")]
    assert sorted(e["study_uid"] for e in events) == [study, study]
    assert took < 60
    if peak_kib > before:  # this child set the children's high-water mark: it is this import's peak
        assert peak_kib < 400 * 1024, f"dicom-import peaked at {peak_kib >> 10} MiB"
