"""dcmtk clients through the audit proxy into a real Orthanc; events land in the spool and reach the node."""

from __future__ import annotations

import json
import socket
import struct

import pytest

from dicom_helpers import (make_instances, run_tool, start_proxy, wait_for, ProcessHandle, free_port,
                      spooled_events)


@pytest.fixture
def proxy(home, orthanc):
    p, port = start_proxy(home, orthanc)
    yield port
    p.stop()
    assert "Traceback" not in p.log.read_text(), p.log.read_text()


def test_store_find_get_move_echo(proxy, home, rpc, orthanc, tmp_path):
    files, study = make_instances(tmp_path / "in", 5, patient_id="RC-PROXY-1")
    run_tool(["echoscu", "-aet", "ECHOSCU", "-aec", "ORTHANC", "127.0.0.1", str(proxy)])
    run_tool(["storescu", "-aet", "MODALITY1", "-aec", "ORTHANC", "127.0.0.1", str(proxy), *map(str, files)])
    stored = wait_for(lambda: [e for e in rpc.unique().values() if e["type"] == "instances.stored"
                               and e["study_uid"] == study] if len([
                                   e for e in rpc.unique().values() if e["study_uid"] == study]) >= 5 else None,
                      20, what="5 stored events delivered")
    assert len(stored) == 5
    e = stored[0]
    assert e["patient_id"] == "RC-PROXY-1" and e["actor"] == "MODALITY1" and e["actor_ae"] == "MODALITY1"
    assert e["peer_ae"] == "ORTHANC" and e["outcome"] == 0 and e["issuer"] == "HOSP-TEST"
    assert len(e["digest"]) == 64 and len(e["pixel_digest"]) == 64
    assert {x["sop_instance_uids"][0] for x in stored} == {
        __import__("pydicom").dcmread(f).SOPInstanceUID for f in files}

    out = run_tool(["findscu", "-aet", "FINDSCU", "-aec", "ORTHANC", "-S", "-k", "QueryRetrieveLevel=STUDY",
                    "-k", f"StudyInstanceUID={study}", "-k", "PatientID=", "127.0.0.1", str(proxy)])
    rx = tmp_path / "get"
    rx.mkdir()
    run_tool(["getscu", "-aet", "GETSCU", "-aec", "ORTHANC", "-od", str(rx), "-S", "-k", "QueryRetrieveLevel=STUDY",
              "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(proxy)])
    assert len(list(rx.iterdir())) == 5
    scp_dir = tmp_path / "scp"
    scp_dir.mkdir()
    scp = ProcessHandle(["storescp", "-aet", "STORESCP", "-od", str(scp_dir), str(orthanc.store_scp_port)],
                        tmp_path / "storescp.log", ready_port=orthanc.store_scp_port).start()
    try:
        run_tool(["movescu", "-aet", "MOVEREQ", "-aec", "ORTHANC", "-aem", "STORESCP", "-S", "-k",
                  "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(proxy)])
    finally:
        scp.stop()
    assert len(list(scp_dir.iterdir())) == 5

    def kinds():
        evs = [e for e in rpc.unique().values() if e["study_uid"] == study]
        got = {e["type"] for e in evs}
        return evs if {"instances.stored", "query", "instances.accessed", "transfer.begin"} <= got else None
    evs = wait_for(kinds, 20, what="query, accessed and transfer events delivered")
    q = [e for e in evs if e["type"] == "query"]
    assert len(q) == 1 and q[0]["actor"] == "FINDSCU" and q[0]["patient_id"] == "RC-PROXY-1" and q[0]["action"] == "E"
    g = [e for e in evs if e["type"] == "instances.accessed"]
    assert len(g) == 1 and g[0]["actor"] == "GETSCU" and g[0]["n_instances"] == 5 and g[0]["action"] == "R"
    assert sorted(g[0]["sop_instance_uids"]) == sorted(stored_uid for x in stored for stored_uid in x["sop_instance_uids"])
    m = [e for e in evs if e["type"] == "transfer.begin"]
    assert len(m) == 1 and m[0]["actor"] == "MOVEREQ" and m[0]["peer_ae"] == "STORESCP"
    assert m[0]["n_instances"] == 5 and m[0]["patient_id"] == "RC-PROXY-1"
    journal = [json.loads(line) for line in (home / "spool" / "journal.jsonl").read_text().splitlines()]
    assert any(j["what"] == "association-accepted" and j["calling_ae"] == "ECHOSCU" and
               j["peer"].startswith("127.0.0.1:") for j in journal)
    assert wait_for(lambda: not list((home / "spool" / "pending").iterdir()), 10, what="spool drained")
