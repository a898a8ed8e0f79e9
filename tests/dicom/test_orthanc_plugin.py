"""The Orthanc plugin (orthanc-python, inside a real Orthanc): stores and HTTP reads become events, which the
plugin's own deliverer sends to the node."""

from __future__ import annotations

import base64
import urllib.parse

from dicom_helpers import make_instances, run_tool, wait_for


def _events(rpc, study):
    return [e for e in rpc.unique().values() if e.get("study_uid") == study]


def test_store_and_reads_become_events(orthanc, orthanc_rpc, tmp_path):
    rpc = orthanc_rpc
    files, study = make_instances(tmp_path / "p", 2, patient_id="RC-PLUGIN-1")
    # REST upload
    up = orthanc.post("/instances", files[0].read_bytes(), "application/dicom")
    # C-STORE straight into Orthanc
    run_tool(["storescu", "-aet", "CT_ROOM_2", "-aec", orthanc.aet, "127.0.0.1", str(orthanc.dicom_port),
              str(files[1])])
    stored = wait_for(lambda: (lambda s: s if len(s) == 2 else None)(
        [e for e in _events(rpc, study) if e["type"] == "instances.stored"]), 15, what="2 stored events")
    by_actor = {e["actor"]: e for e in stored}
    assert set(by_actor) == {"orthanc-rest-api", "CT_ROOM_2"}
    assert by_actor["CT_ROOM_2"]["actor_ae"] == "CT_ROOM_2" and by_actor["CT_ROOM_2"]["peer_ae"] == "ORTHANC"
    from node.dicom.rawdicom import inspect_file
    info = inspect_file(files[0].read_bytes())
    assert by_actor["orthanc-rest-api"]["digest"] == info.digest  # Orthanc keeps the data set bytes as sent
    assert by_actor["orthanc-rest-api"]["pixel_digest"] == info.pixel_digest
    assert all(e["patient_id"] == "RC-PLUGIN-1" for e in stored)

    # REST read of the file, as user "dr.who" (HTTP basic credentials in front of Orthanc)
    auth = {"Authorization": "Basic " + base64.b64encode(b"dr.who:secret").decode()}
    blob = orthanc.get(f"/instances/{up['ID']}/file", headers=auth)
    assert blob[128:132] == b"DICM"
    reads = wait_for(lambda: [e for e in _events(rpc, study) if e["type"] == "instances.accessed"], 15,
                     what="REST read event")
    assert reads[0]["actor"] == "dr.who" and reads[0]["sop_instance_uids"] == [info.get("SOPInstanceUID")]
    assert reads[0]["action"] == "R" and reads[0]["patient_id"] == "RC-PLUGIN-1"

    # WADO-URI and DICOMweb (WADO-RS) reads
    if orthanc.config().get("DicomWeb"):
        q = urllib.parse.urlencode({"requestType": "WADO", "studyUID": study,
                                    "seriesUID": info.get("SeriesInstanceUID"),
                                    "objectUID": info.get("SOPInstanceUID"), "contentType": "application/dicom"},
                                   safe="/")
        orthanc.get(f"/wado?{q}", headers={"X-Forwarded-User": "wado.user"})
        orthanc.get(f"/dicom-web/studies/{study}/metadata", headers={"X-Forwarded-User": "web.user"})
        wait_for(lambda: {"wado.user", "web.user"} <= {e["actor"] for e in _events(rpc, study)
                                                       if e["type"] == "instances.accessed"}, 15,
                 what="WADO-URI and DICOMweb read events")
    # pages that are not reads of images are not events
    orthanc.get("/system")
    orthanc.get("/statistics")
    assert not [e for e in rpc.unique().values() if e.get("actor", "").startswith("http-client")
                and e.get("study_uid") is None]
    assert "Traceback" not in (orthanc.root / "orthanc.log").read_text()


def test_shipped_example_config_starts_orthanc_with_the_plugin(tmp_path):
    """deploy/orthanc/orthanc.json (with its comments) loads in the real Orthanc, plugin included."""
    import json
    import re
    import subprocess

    from dicom_helpers import ENV, REPO, free_port, need, port_open, write_home

    need("Orthanc")
    text = (REPO / "deploy" / "orthanc" / "orthanc.json").read_text()
    cfg = json.loads(re.sub(r"//[^\n]*", "", text))
    http, dicom = free_port(), free_port()
    text = (text.replace("/var/lib/orthanc/db", str(tmp_path / "db"))
                .replace("/var/lib/radchain/node", str(tmp_path / "home"))
                .replace("/opt/radchain", str(REPO))
                .replace('"HttpPort": 8042', f'"HttpPort": {http}').replace('"DicomPort": 4242', f'"DicomPort": {dicom}'))
    assert cfg["RadChain"]["Home"] and cfg["PythonScript"].endswith("radchain_plugin.py")
    write_home(tmp_path / "home", None, None)
    (tmp_path / "orthanc.json").write_text(text)
    log = open(tmp_path / "orthanc.log", "wb")
    proc = subprocess.Popen(["Orthanc", str(tmp_path / "orthanc.json")], env=ENV, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is not None or "radchain plugin: recording into" in
                 (tmp_path / "orthanc.log").read_text(), 30, what="plugin loaded")
        assert proc.poll() is None, (tmp_path / "orthanc.log").read_text()[-2000:]
        wait_for(lambda: port_open(dicom), 10, what="DICOM port")
    finally:
        proc.terminate()
        proc.wait(20)
