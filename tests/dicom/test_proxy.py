"""dcmtk clients through the audit proxy into a real Orthanc; events land in the spool and reach the node."""

from __future__ import annotations

import json
import socket
import struct
import threading

import pytest
from dicom_helpers import (
    RADCHAIN,
    ProcessHandle,
    associate_rq,
    command_set,
    free_port,
    make_instances,
    p_data,
    raw_store,
    run_tool,
    spooled_events,
    start_proxy,
    wait_for,
)

from node.dicom import ul


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

    run_tool(["findscu", "-aet", "FINDSCU", "-aec", "ORTHANC", "-S", "-k", "QueryRetrieveLevel=STUDY",
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

VERIFICATION = "1.2.840.10008.1.1"


def _journal(home):
    path = home / "spool" / "journal.jsonl"
    text = path.read_text() if path.exists() else ""
    # the proxy may be writing a line right now: read whole lines only
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]


def test_unknown_ae_garbage_and_malformed_data_keep_the_proxy_up(home, rpc, orthanc, tmp_path):
    p, port = start_proxy(home, orthanc, "--allow-ae", "MODALITY1")
    try:
        # unknown calling AE: rejected by the proxy with "calling AE title not recognized"
        out = run_tool(["echoscu", "-aet", "STRANGER", "-aec", "ORTHANC", "127.0.0.1", str(port)], check=False)
        assert out.returncode != 0
        assert "Calling AE Title Not Recognized" in out.stdout + out.stderr, out.stdout + out.stderr
        assert wait_for(lambda: [j for j in _journal(home) if j["what"] == "association-rejected"
                                 and "STRANGER" in j["reason"]], 5, what="rejection journaled")
        # garbage on the DICOM port: the connection is dropped
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(100) == b""
        # an A-ASSOCIATE-RQ announcing more bytes than it sends, then hanging up
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(bytes([1, 0]) + struct.pack(">I", 500) + b"\x00\x01")
        # a C-STORE whose data set is truncated: journaled with the parse error, no event
        bad = tmp_path / "bad.dcm"
        files, study = make_instances(tmp_path / "ok", 1, patient_id="RC-BAD-1")
        bad.write_bytes(files[0].read_bytes()[:3000])
        # explicit VR bytes, truncated, on an implicit VR context (Orthanc then waits for more: give up at 3 s)
        raw_store(port, bad.read_bytes()[200:], timeout=3)
        assert wait_for(lambda: [j for j in _journal(home) if j["what"] == "malformed-dataset"], 10,
                        what="malformed data set journaled")
        # still up, and still recording
        run_tool(["storescu", "-aet", "MODALITY1", "-aec", "ORTHANC", "127.0.0.1", str(port), str(files[0])])
        wait_for(lambda: [e for e in rpc.unique().values() if e["study_uid"] == study], 15,
                 what="event after the errors")
        assert p.running()
        assert "Traceback" not in p.log.read_text(), p.log.read_text()
        assert "not in [dicom] allowed_aets" in p.log.read_text()
    finally:
        p.stop()


class _Tap:
    """A TCP hop between the proxy and Orthanc that keeps every byte the proxy sent towards the PACS."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.upstream: list[bytearray] = []  # per connection
        self.to_proxy: list[socket.socket] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.target_port))
            self.upstream.append(keep := bytearray())
            self.to_proxy.append(down)
            threading.Thread(target=self._pipe, args=(down, up, keep), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, down, None), daemon=True).start()

    @staticmethod
    def _pipe(src, dst, keep):
        try:
            while data := src.recv(65536):
                if keep is not None:
                    keep += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            src.close()

    def inject(self, data: bytes) -> None:
        """Send `data` to the proxy as if the PACS had sent it, on the newest connection (in a thread: the
        proxy may stop reading); `injected` counts what the kernel took."""
        self.injected, self.injection_done = 0, False
        sock = self.to_proxy[-1]

        def run():
            for i in range(0, len(data), 1 << 16):
                try:
                    sock.sendall(data[i:i + (1 << 16)])
                except OSError:
                    return
                self.injected += len(data[i:i + (1 << 16)])
            self.injection_done = True
        threading.Thread(target=run, daemon=True).start()

    def wait_until_the_proxy_stops_reading(self) -> None:
        """Until what the kernel takes from an injection has not grown for 1.5 s (polled every half second)."""
        seen: list[int] = []

        def stalled():
            seen.append(self.injected)
            return len(seen) >= 4 and len(set(seen[-4:])) == 1 and seen[-1] > 0
        wait_for(stalled, 20, interval=0.5, what="the injection to stall")
        assert not self.injection_done, "the proxy took the whole flood: nothing waits in a send"

    def close(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread in accept()
        except OSError:
            pass
        self.listener.close()


def _proxy_behind(tap: _Tap, home, tmp_path) -> tuple[ProcessHandle, int]:
    port = free_port()
    p = ProcessHandle([RADCHAIN, "dicom-proxy", "--home", str(home), "--listen", f"127.0.0.1:{port}",
                       "--pacs", f"ORTHANC@127.0.0.1:{tap.port}"], tmp_path / "proxy.log", ready_port=port)
    return p.start(), port


ECHO = p_data(command_set(VERIFICATION, 0x0030, has_dataset=False), 0x03)  # a C-ECHO-RQ, context 1
ECHO_OK = b"\x00\x00\x00\x09\x02\x00\x00\x00\x00\x00"  # (0000,0900) Status 0 in a command set


def _read_pdu(s: socket.socket) -> bytes:
    got = b""
    while len(got) < 6 or len(got) < 6 + struct.unpack(">I", got[2:6])[0]:
        chunk = s.recv(65536)
        if not chunk:
            return got
        got += chunk
    return got


def test_a_pdu_the_proxy_refuses_never_reaches_the_pacs(home, rpc, orthanc, tmp_path):
    """Each chunk a modality sends is parsed before it is forwarded: bytes the proxy refuses (here a PDU type
    the Upper Layer does not define) end the association on both sides and never reach the PACS."""
    tap = _Tap(orthanc.dicom_port)
    p, port = _proxy_behind(tap, home, tmp_path)
    refused = {  # what each bad chunk is, as the proxy's journal has it
        "an undefined PDU type": bytes([0x55, 0]) + struct.pack(">I", 12) + b"RC-NOT-SENT!",
        "a P-DATA-TF over the size limit": bytes([4, 0]) + struct.pack(">I", ul.MAX_PDU + 1) + b"RC-NOT-SENT!",
    }
    try:
        # five times each: the abort used to collide, one time in a few, with the relay still sending
        # the C-ECHO's answer (trio refused the second sender, the abort was lost, the error logged a crash)
        for what, chunk in list(refused.items()) * 5:
            n = len(tap.upstream)  # this association's connection to the PACS is the next one
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(associate_rq(sop_class=VERIFICATION))
                assert _read_pdu(s)[0] == 2, "association accepted"
                s.sendall(ECHO)
                rsp = _read_pdu(s)
                assert rsp[0] == 4 and ECHO_OK in rsp, "C-ECHO answered"
                assert bytes(tap.upstream[n]).endswith(ECHO)
                s.sendall(chunk)
                assert _read_pdu(s) == ul.abort(), f"{what}: the modality gets an A-ABORT"
            wait_for(lambda n=n: bytes(tap.upstream[n]).endswith(ECHO + ul.abort()), 5, what="the PACS's A-ABORT")
        wait_for(lambda: len([j for j in _journal(home) if j["what"] == "association-aborted-by-proxy"]) == 10,
                 10, what="every abort journaled")
        assert len(tap.upstream) == 10 and not [b for b in tap.upstream if b"RC-NOT-SENT!" in b]
        assert p.running()
    finally:
        p.stop()
        tap.close()
    assert "Traceback" not in p.log.read_text(), p.log.read_text()


def test_an_abort_while_the_modality_is_not_reading_leaves_the_proxy_clean(home, rpc, orthanc, tmp_path):
    """The PACS streams to a modality that does not read (the proxy's relay waits inside a send to it) when
    the modality sends bytes the proxy refuses: the association is aborted and journaled, no crash is logged,
    and the proxy goes on serving. (Sending the A-ABORT there and then collided with that waiting send.)"""
    tap = _Tap(orthanc.dicom_port)
    p, port = _proxy_behind(tap, home, tmp_path)
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.settimeout(10)
            s.connect(("127.0.0.1", port))
            s.sendall(associate_rq(sop_class=VERIFICATION))
            assert _read_pdu(s)[0] == 2, "association accepted"
            s.sendall(ECHO)
            assert _read_pdu(s)[0] == 4, "C-ECHO answered"
            # an N-EVENT-REPORT with an 8 MiB data set, from the PACS's side, that the modality never reads
            flood = p_data(command_set(VERIFICATION, 0x0100), 0x01 | 0x02)
            flood += p_data(bytes(16000), 0x00) * 512
            tap.inject(flood)
            tap.wait_until_the_proxy_stops_reading()
            s.sendall(bytes([0x55, 0]) + struct.pack(">I", 12) + b"RC-NOT-SENT!")
            wait_for(lambda: [j for j in _journal(home) if j["what"] == "association-aborted-by-proxy"], 10,
                     what="the abort journaled")
            # the proxy was cut off mid-PDU towards the modality: it closes that side, with no A-ABORT's
            # bytes inside the unfinished PDU; what the modality reads is a clean prefix of what the PACS sent
            rest = b""
            try:
                while chunk := s.recv(65536):
                    rest += chunk
            except ConnectionResetError:
                pass
            assert rest == flood[:len(rest)] and len(rest) < len(flood)
        assert bytes(tap.upstream[-1]).endswith(ul.abort()), "the PACS gets its A-ABORT"
        assert not [b for b in tap.upstream if b"RC-NOT-SENT!" in b]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # still serving
            s.sendall(associate_rq(sop_class=VERIFICATION))
            assert _read_pdu(s)[0] == 2
            s.sendall(ECHO)
            assert ECHO_OK in _read_pdu(s)
        assert p.running()
    finally:
        p.stop()
        tap.close()
    log = p.log.read_text()
    assert "Traceback" not in log, log


def test_node_down_during_storescu_burst(home, rpc, orthanc, tmp_path):
    files, study = make_instances(tmp_path / "burst", 60, patient_id="RC-BURST-1")
    rpc.stop()  # the node is down before and during the burst; the PACS must not wait for it
    p, port = start_proxy(home, orthanc)
    try:
        run_tool(["storescu", "-aet", "MODALITY1", "-aec", "ORTHANC", "127.0.0.1", str(port),
                  *map(str, files)], timeout=60)
        pending = spooled_events(home)
        assert len([e for e in pending if e["study_uid"] == study]) == 60
        rpc.start()
        wait_for(lambda: len([e for e in rpc.unique().values() if e["study_uid"] == study]) == 60, 30,
                 what="all 60 events delivered after the node came back")
        assert wait_for(lambda: not spooled_events(home), 10, what="spool empty")
    finally:
        p.stop()


def test_staged_events_left_by_a_crash_are_settled_by_asking_the_pacs(home, rpc, orthanc, tmp_path):
    """A proxy killed between staging a C-STORE event and relaying the PACS's answer: on restart the staged
    events are settled by an IMAGE-level C-FIND to the PACS (held -> outcome 0, not held -> 8)."""
    import os
    import time

    from node.dicom.rawdicom import inspect_file
    from node.dicom.records import stored_event
    from node.dicom.spool import Spool

    files, study = make_instances(tmp_path / "s", 2, patient_id="RC-SETTLE-1")
    run_tool(["storescu", "-aet", "MODALITY1", "-aec", "ORTHANC", "127.0.0.1", str(orthanc.dicom_port),
              str(files[0])])  # only the first one reached the PACS
    spool = Spool(home / "spool")
    names = [spool.stage(stored_event(inspect_file(f.read_bytes()), actor="MODALITY1", actor_ae="MODALITY1",
                                      peer_ae="ORTHANC", outcome=0, purpose="TREAT", default_issuer="H"),
                         source="dicom-proxy") for f in files]
    (spool.staged_dir / "00000000000000000001-1-00000000.json").write_text('{"event": {"type"')  # torn
    old = time.time() - 120
    for p in spool.staged():
        os.utime(p, (old, old))
    p, port = start_proxy(home, orthanc)
    try:
        got = wait_for(lambda: (lambda ev: ev if len(ev) == 2 else None)(
            [e for e in rpc.unique().values() if e.get("study_uid") == study]), 30, what="settled events")
        by_sop = {e["sop_instance_uids"][0]: e["outcome"] for e in got}
        assert by_sop == {inspect_file(files[0].read_bytes()).get("SOPInstanceUID"): 0,
                          inspect_file(files[1].read_bytes()).get("SOPInstanceUID"): 8}
        assert not spool.staged() and len(names) == 2
    finally:
        p.stop()


def test_proxy_starts_from_the_dicom_section_of_config_toml(rpc, orthanc, tmp_path):
    from dicom_helpers import RADCHAIN, free_port, write_home

    port = free_port()
    home = write_home(tmp_path / "cfg-home", f"127.0.0.1:{rpc.port}", rpc.token,
                      proxy_listen=f"127.0.0.1:{port}", pacs=f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
                      allowed_aets=["ECHOSCU"])
    p = ProcessHandle([RADCHAIN, "dicom-proxy", "--home", str(home)], tmp_path / "p.log", ready_port=port).start()
    try:
        run_tool(["echoscu", "-aet", "ECHOSCU", "-aec", "ORTHANC", "127.0.0.1", str(port)])
        assert run_tool(["echoscu", "-aet", "OTHER", "-aec", "ORTHANC", "127.0.0.1", str(port)],
                        check=False).returncode != 0
    finally:
        p.stop()
    bad = ProcessHandle([RADCHAIN, "dicom-proxy", "--home", str(home), "--pacs", "no-at-sign"], tmp_path / "b.log")
    bad.start()
    assert bad.proc.wait(20) == 2 and "AET@HOST:PORT" in bad.log.read_text()
