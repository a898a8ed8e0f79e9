"""Hostile DICOM (issue 10 item 4): deflate bombs, deep nesting and truncated files give DicomFormatError
within bounded time and memory, in the walkers, the UL command parser, split_file and dicom-import."""

from __future__ import annotations

import json
import sys
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


_PEAK_RSS = ("import resource, subprocess, sys\n"
             "p = subprocess.run(sys.argv[1:])\n"
             "print('peak-rss-kib', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
             "sys.exit(p.returncode)")


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
    t0 = time.monotonic()
    # through a wrapper whose only child is the import, so its peak RSS is the import's own
    proc = run_tool([sys.executable, "-c", _PEAK_RSS, RADCHAIN, "dicom-import", "--home", str(home), "--no-deliver",
                     str(src)], check=False, timeout=120)
    took = time.monotonic() - t0
    peak_mib = int(proc.stderr.rsplit("peak-rss-kib ", 1)[1]) >> 10
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
    # measured: ~165 MiB (the 64 MiB cap, twice while zlib grows its buffer, plus the interpreter); the
    # 200 MiB the bomb inflates to would be twice that in pydicom alone
    assert peak_mib < 300, f"dicom-import peaked at {peak_mib} MiB"


FIND_MODEL = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
MOVE_MODEL = "1.2.840.10008.5.1.4.1.2.2.2"  # ... - MOVE


def _vm_hwm_mib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) >> 10
    raise AssertionError("no VmHWM")


def _journal(home):
    path = home / "spool" / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_proxy_survives_bomb_nesting_and_truncation(home, rpc, orthanc, tmp_path):
    """Through the real proxy in front of Orthanc: a C-STORE of 3000 nested sequences, a deflate bomb, a
    truncated data set and a C-FIND whose identifier nests 3000 deep; each is journaled as malformed within
    seconds, the proxy's memory stays bounded, and the next ordinary store is recorded."""
    from dicom_helpers import deflate_bomb, raw_store, start_proxy, wait_for

    p, port = start_proxy(home, orthanc)
    try:
        base = _vm_hwm_mib(p.proc.pid)
        t0 = time.monotonic()
        raw_store(port, ident_elements() + nested_sequences(3000), ts=rawdicom.EXPLICIT_LE, timeout=20)
        # 80 MiB, not the 200 MiB bomb: Orthanc behind the proxy inflates what it is sent, slowly, and the
        # proxy only sees the end of the data set once Orthanc has read the rest (TCP backpressure)
        small_bomb = deflate_bomb(80 << 20)
        raw_store(port, small_bomb + b"\0" * (len(small_bomb) % 2), ts=DEFLATED_LE, timeout=5)  # even PDVs
        raw_store(port, (ident_elements() + nested_sequences(10))[:-7], ts=rawdicom.EXPLICIT_LE, timeout=2)
        raw_store(port, nested_sequences(3000, explicit=False), command_field=0x0020, sop_class=FIND_MODEL,
                  sop_uid=None, timeout=20)

        def errors():
            return [j["error"] for j in _journal(home) if j["what"] == "malformed-dataset"]
        wait_for(lambda: len(errors()) >= 4, 30, what="four malformed data sets journaled")
        took = time.monotonic() - t0
        errs = errors()
        assert sum("nested deeper than 64" in e for e in errs) == 2, errs
        assert any("64 MiB cap" in e for e in errs) and any("truncated" in e or "past the end" in e for e in errs)
        assert took < 60
        # the proxy inflated at most its cap (64 MiB, twice while zlib grows its buffer), not the 200 MiB
        assert _vm_hwm_mib(p.proc.pid) - base < 200, (base, _vm_hwm_mib(p.proc.pid))
        files, study = make_instances(tmp_path / "ok", 1, patient_id="RC-AFTER-BOMB")
        run_tool(["storescu", "-aet", "MODALITY1", "-aec", "ORTHANC", "127.0.0.1", str(port), str(files[0])])
        wait_for(lambda: [e for e in rpc.unique().values() if e["study_uid"] == study], 15,
                 what="event after the bombs")
        log = p.log.read_text()
        assert p.running() and "Traceback" not in log and "RecursionError" not in log, log[-3000:]
        problems = [line for line in log.splitlines() if " ERROR " in line or " WARNING " in line]
        assert problems and not [line for line in problems if "RC-BOMB-1" in line or "MODALITY1" in line
                                 or "127.0.0.1" in line]  # no PHI side channel (issue 10 item 6)
    finally:
        p.stop()


def _big_identifier(patient: str, n: int = 450_000) -> bytes:
    """A C-MOVE identifier (implicit VR LE) of ~3.6 MB, under ul.MAX_IDENTIFIER, that takes about a second
    of pure-Python walking: n empty private elements, 1,000 per item of one private sequence (so that
    dcmtk, which Orthanc parses it with, is not slowed by one huge item), then PatientID."""
    import struct
    level = struct.pack("<HHI", 0x0008, 0x0052, 6) + b"STUDY "
    item = b"".join(struct.pack("<HHI", 0x0009, 0x1000 + i, 0) for i in range(1000))
    # undefined-length items: the walker must visit every element to find each item's end
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + item + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    seq = struct.pack("<HHI", 0x0009, 0x0010, 8) + b"RADCHAIN" + struct.pack("<HHI", 0x0009, 0x1010, 0xFFFFFFFF)
    seq += item * (n // 1000) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    pid = patient.encode()
    pid += b" " * (len(pid) % 2)
    study = b"1.2.826.0.1.3680043.778.1"
    return (level + seq + struct.pack("<HHI", 0x0010, 0x0020, len(pid)) + pid
            + struct.pack("<HHI", 0x0020, 0x000D, len(study) + 1) + study + b"\0")


async def test_identifiers_are_parsed_off_the_event_loop(rpc, orthanc, tmp_path):
    """The hook inside a node's trio loop (as `radchain start` runs it): a C-MOVE whose identifier takes
    about a second to walk must not stall the loop; the transfer is still recorded. (C-MOVE, not C-FIND:
    Orthanc takes minutes to match a 450,000-key C-FIND; it refuses this move to an unknown destination
    at once. The proxy parses C-FIND, C-GET and C-MOVE identifiers the same way.)"""
    import trio
    from dicom_helpers import free_port, raw_store

    from node.dicom.service import run_dicom_hook

    # Sized to this machine: big enough that walking it on the loop would stall it visibly (> 0.3 s),
    # within ul.MAX_IDENTIFIER.
    for n in (450_000, 500_000):
        ident = _big_identifier("RC-LOOP-1", n)
        t0 = time.monotonic()
        rawdicom.walk_dataset(ident, rawdicom.IMPLICIT_LE, {0x00100020})
        walk_seconds = time.monotonic() - t0
        if walk_seconds > 0.3:
            break
    assert walk_seconds > 0.1, "the identifier is too small to show a stall on this machine"
    pport = free_port()
    home = write_home(tmp_path / "svc", f"127.0.0.1:{rpc.port}", rpc.token, proxy_listen=f"127.0.0.1:{pport}",
                      pacs=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}")
    lags: list[float] = []

    async def heartbeat():
        while True:
            t = trio.current_time()
            await trio.sleep(0.01)
            lags.append(trio.current_time() - t - 0.01)

    async with trio.open_nursery() as nursery:
        await nursery.start(run_dicom_hook, home)
        nursery.start_soon(heartbeat)
        await trio.to_thread.run_sync(lambda: raw_store(pport, ident, command_field=0x0021, sop_class=MOVE_MODEL,
                                                        sop_uid=None, move_destination="NOWHERE", timeout=30))
        with trio.fail_after(30):
            while not any(e.get("patient_id") == "RC-LOOP-1" for e in rpc.unique().values()):
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    event = next(e for e in rpc.unique().values() if e.get("patient_id") == "RC-LOOP-1")
    assert event["type"] == "transfer.begin" and event["peer_ae"] == "NOWHERE"
    # the walk alone took walk_seconds; on the loop it would have stalled the heartbeat that long
    print(f"identifier walk {walk_seconds:.2f}s, worst event-loop lag {max(lags):.3f}s")
    assert max(lags) < min(0.25, walk_seconds / 2), (max(lags), walk_seconds)


def test_orthanc_plugin_survives_bad_files(orthanc, orthanc_rpc, tmp_path):
    """Bad files into the real Orthanc with the plugin: a deflated data set past the 64 MiB cap over REST is
    discarded by the plugin's guard before Orthanc stores it; 3000 nested sequences over C-STORE and a
    truncated meta element are refused by Orthanc itself; no event, no traceback, Orthanc keeps running and
    the next upload is recorded.
    (Not tested, because it kills Orthanc 1.10.1 itself whatever a plugin does: a REST upload of 3,000 nested
    sequences; the REST handler parses the file recursively after every plugin hook. docs/DICOM.md.)"""
    import urllib.error

    from dicom_helpers import deflate_bomb, raw_store, wait_for

    nested = ident_elements(patient="RC-PLUGIN-NESTED") + nested_sequences(3000)
    answer = raw_store(orthanc.dicom_port, nested, ts=rawdicom.EXPLICIT_LE, timeout=20)
    assert answer[:1] == b"\x04", answer[:20]  # a C-STORE response, not a dropped connection
    for blob in (dicom_file(deflate_bomb(80 << 20), DEFLATED_LE), truncated_meta_file()):
        try:
            orthanc.post("/instances", blob, "application/dicom")
        except urllib.error.HTTPError as exc:
            assert exc.code in (400, 404, 415), exc  # refused (truncated) or filtered out by the plugin (bomb)
    files, study = make_instances(tmp_path / "after", 1, patient_id="RC-PLUGIN-AFTER")
    orthanc.post("/instances", files[0].read_bytes(), "application/dicom")
    wait_for(lambda: [e for e in orthanc_rpc.unique().values() if e.get("study_uid") == study], 20,
             what="the upload after the bad files recorded")
    assert orthanc.alive()
    log = (orthanc.root / "orthanc.log").read_text()
    assert "Traceback" not in log and "RecursionError" not in log
    assert "discarding a received instance: deflated data set inflates past the 64 MiB cap" in log
    assert not [e for e in orthanc_rpc.unique().values() if e.get("patient_id") in ("RC-PLUGIN-NESTED", "RC-BOMB-1")]


def test_unrecordable_operations_leave_no_identifier_in_journal_or_log(home, rpc, orthanc, tmp_path):
    """Issue 10 item 6: a C-MOVE naming a patient but no study cannot go on chain ("no StudyInstanceUID");
    its journal entry says why and what shape, never the Patient ID; the proxy's log has neither the Patient
    ID nor the calling AE title nor the peer address."""
    import struct

    from dicom_helpers import raw_store, start_proxy, wait_for

    pid = b"RC-PHI-SIDE-1 "
    ident = (struct.pack("<HHI", 0x0008, 0x0052, 8) + b"PATIENT " + struct.pack("<HHI", 0x0010, 0x0020, len(pid))
             + pid)
    p, port = start_proxy(home, orthanc)
    try:
        raw_store(port, ident, command_field=0x0021, sop_class="1.2.840.10008.5.1.4.1.2.1.2", sop_uid=None,
                  move_destination="NOWHERE", calling="WS-DR-SMITH", timeout=20)
        entry = wait_for(lambda: [j for j in _journal(home) if j["what"] == "unrecordable"], 20,
                         what="unrecordable C-MOVE journaled")[0]
        assert entry["reason"] == "no StudyInstanceUID" and entry["type"] == "transfer.begin"
        assert entry["has_patient"] is True and "event" not in entry
        journal = (home / "spool" / "journal.jsonl").read_text()
        assert "RC-PHI-SIDE-1" not in journal
        assert "WS-DR-SMITH" in journal  # the journal (local, 0600) keeps who asked
        log = p.log.read_text()
        assert "not recorded on chain: no StudyInstanceUID" in log
        assert "RC-PHI-SIDE-1" not in log and "WS-DR-SMITH" not in log
        assert not [line for line in log.splitlines() if "127.0.0.1" in line and "listening" not in line]
        assert not list((home / "spool" / "pending").glob("*.json"))
    finally:
        p.stop()
