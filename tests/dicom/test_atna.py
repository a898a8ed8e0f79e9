"""ATNA receiver: PS3.15 A.5 audit messages over syslog TCP (octet counting), TLS and UDP -> events."""

from __future__ import annotations

import socket
import ssl
import subprocess

import pytest
from dicom_helpers import RADCHAIN, ProcessHandle, audit_xml, frame, free_port, syslog, wait_for

from node.dicom import atna


def test_parse_audit_message():
    code, events = atna.parse_audit_message(audit_xml(), purpose="TREAT", default_issuer="HOSP")
    assert code == "110103" and len(events) == 1
    e = events[0]
    assert e["type"] == "instances.accessed" and e["patient_id"] == "RC-ATNA-1" and e["issuer"] == "HOSP-X"
    assert e["actor"] == "dr.jones" and e["actor_ae"] == "VIEWER1" and e["peer_ae"] == "PACS1"
    assert e["sop_instance_uids"] == ["1.2.3.1", "1.2.3.2"] and e["n_instances"] == 2 and e["action"] == "R"
    assert e["time"] == 1795773600000 and e["event_id"].startswith("atna-")
    assert atna.parse_audit_message(audit_xml(), purpose="TREAT", default_issuer="H")[1][0]["event_id"] == e["event_id"]
    assert atna.parse_audit_message(audit_xml(event="110100"), purpose="TREAT", default_issuer="H") == ("110100", [])
    assert atna.parse_audit_message(audit_xml(event="110112", action="E", study=None),
                                    purpose="TREAT", default_issuer="H")[1][0]["type"] == "query"
    for bad, why in [(b"<nope", "not XML"), (b"<Other/>", "not <AuditMessage>"),
                     (audit_xml(patient=None), "no patient"), (audit_xml(when="yesterday"), "EventDateTime")]:
        with pytest.raises(atna.AuditMessageError, match=why):
            atna.parse_audit_message(bad, purpose="TREAT", default_issuer="H")


def test_syslog_framing_and_header():
    msg = syslog(audit_xml())
    f = atna.Framer()
    stream = frame(msg) + frame(msg) + msg + b"\n"
    out = []
    for i in range(0, len(stream), 50):
        out += f.feed(stream[i:i + 50])
    assert out == [msg, msg, msg]
    parsed = atna.parse_syslog(msg)
    assert (parsed.facility, parsed.severity, parsed.msgid, parsed.hostname) == (10, 5, "IHE+RFC-3881", "viewer-host")
    assert parsed.msg.startswith(b"<AuditMessage")
    sd = atna.parse_syslog(b'<13>1 - h a - - [ex@1 k="v \\] x"][b@2] hi')
    assert sd.structured_data == '[ex@1 k="v \\] x"][b@2]' and sd.msg == b"hi"
    for bad in [b"hello", b"<999>1 - - - - - - x", b"<13>2 - - - - - - x", b"<13>1 - - - - - x"]:
        with pytest.raises(atna.SyslogError):
            atna.parse_syslog(bad)
    f = atna.Framer()
    assert f.feed(frame(msg) + b"xyz garbage\n" + frame(msg)) == [msg] and "neither" in str(f.error)
    assert f.feed(frame(msg)) == []  # out of sync for good
    f = atna.Framer()
    assert f.feed(b"0123 <1>1") == [] and "MSG-LEN" in str(f.error)


@pytest.fixture
def tls_cert(tmp_path):
    cert, key = tmp_path / "atna.pem", tmp_path / "atna.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


def test_receiver_tcp_tls_udp(home, rpc, tls_cert, tmp_path):
    tcp, tls, udp = free_port(), free_port(), free_port()
    cert, key = tls_cert
    p = ProcessHandle([RADCHAIN, "atna-receiver", "--home", str(home), "--tcp", f"127.0.0.1:{tcp}",
                       "--tls", f"127.0.0.1:{tls}", "--udp", f"127.0.0.1:{udp}", "--cert", str(cert),
                       "--key", str(key)], tmp_path / "atna.log", ready_port=tcp).start()
    try:
        wait_for(lambda: "udp listening" in p.log.read_text(), 10, what="all listeners up")
        # TCP: one good message, a non-imaging one, a bad line; then framing garbage closes that connection
        with socket.create_connection(("127.0.0.1", tcp), timeout=10) as s:
            s.sendall(frame(syslog(audit_xml(study="1.2.99.1"))) + frame(syslog(audit_xml(event="110114")))
                      + frame(b"<13>1 this is not a syslog header") + frame(syslog(b"<notxml")))
            s.sendall(b"GARBAGE\n")
            assert s.recv(10) == b""  # the receiver hung up on the broken framing
        # TLS
        ctx = ssl.create_default_context(cafile=str(cert))
        with socket.create_connection(("127.0.0.1", tls), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(frame(syslog(audit_xml(study="1.2.99.2", event="110104", action="C"))))
        # UDP
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(syslog(audit_xml(study="1.2.99.3", event="110102", action="E")), ("127.0.0.1", udp))
        got = wait_for(lambda: (lambda ev: ev if len(ev) == 3 else None)(
            {e["study_uid"]: e for e in rpc.unique().values()}), 15, what="3 ATNA events delivered")
        assert got["1.2.99.1"]["type"] == "instances.accessed"
        assert got["1.2.99.2"]["type"] == "instances.transferred"
        assert got["1.2.99.3"]["type"] == "transfer.begin"
        log = p.log.read_text()
        assert "STRUCTURED-DATA must be" in log and "MSG is not XML" in log
        assert "neither a MSG-LEN nor '<PRI>'" in log
        assert p.running() and "Traceback" not in log
        # still up after the errors
        with socket.create_connection(("127.0.0.1", tcp), timeout=10) as s:
            s.sendall(frame(syslog(audit_xml(study="1.2.99.4"))))
        wait_for(lambda: any(e["study_uid"] == "1.2.99.4" for e in rpc.unique().values()), 10,
                 what="event after errors")
    finally:
        p.stop()
