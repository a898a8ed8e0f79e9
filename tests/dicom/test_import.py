"""`radchain dicom-import` on pydicom's bundled files: events delivered, bad files named, re-import idempotent."""

from __future__ import annotations

import shutil

from dicom_helpers import RADCHAIN, make_instances, run_tool, sample_file


def test_import_folder(home, rpc, tmp_path):
    src = tmp_path / "archive"
    files, study = make_instances(src / "a", 3, patient_id="RC-IMPORT-1")
    shutil.copy(sample_file("MR_small.dcm"), src / "mr.dcm")
    (src / "notes.txt").write_text("not an image")
    good = sample_file("CT_small.dcm").read_bytes()
    (src / "truncated.dcm").write_bytes(good[:3000])
    proc = run_tool([RADCHAIN, "dicom-import", "--home", str(home), str(src)], check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # some files were skipped
    assert "spooled 4 instance(s) of 2 study(ies); 2 file(s) skipped" in proc.stdout
    assert "notes.txt: not a DICOM file" in proc.stderr
    assert "truncated.dcm: malformed DICOM" in proc.stderr
    assert "delivered to the node" in proc.stdout
    events = rpc.unique()
    assert len(events) == 4
    ours = [e for e in events.values() if e["study_uid"] == study]
    assert len(ours) == 3 and all(e["patient_id"] == "RC-IMPORT-1" and e["type"] == "instances.stored"
                                  and e["actor"] == "dicom-import" and len(e["digest"]) == 64 for e in ours)
    # re-import: same event ids and times, so the node would see the same txs
    proc = run_tool([RADCHAIN, "dicom-import", "--home", str(home), str(src / "a")])
    assert len(rpc.unique()) == 4 and len(rpc.events) == 7
    assert all(rpc.events[i] == rpc.by_id[rpc.events[i]["event_id"]] for i in range(4, 7))


def test_import_without_node_keeps_events_in_spool(tmp_path):
    from dicom_helpers import write_home
    home = write_home(tmp_path / "h", "127.0.0.1:1", "token-0123456789abcdef")
    proc = run_tool([RADCHAIN, "dicom-import", "--home", str(home), "--wait", "0.5",
                     str(sample_file("CT_small.dcm"))])
    assert "1 event(s) left in the spool" in proc.stdout
    assert len(list((home / "spool" / "pending").iterdir())) == 1
    proc = run_tool([RADCHAIN, "dicom-import", "--home", str(home), str(tmp_path / "nope")], check=False)
    assert proc.returncode == 2 and "no such file" in proc.stderr
