"""ATNA receiver: PS3.15 A.5 audit messages over syslog TCP (octet counting), TLS and UDP -> events."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess

import pytest
from dicom_helpers import (
    RADCHAIN,
    ProcessHandle,
    audit_xml,
    frame,
    free_port,
    make_pki,
    syslog,
    wait_for,
    write_home,
)

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
def pki(tmp_path):
    return make_pki(tmp_path / "pki")


def _tls(port: int, pki: dict, *, cert: str | None = "client", source_ip: str = "127.0.0.1"):
    """A TLS client socket to the receiver, optionally presenting a client certificate."""
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    if cert:
        ctx.load_cert_chain(str(pki[cert]), str(pki[cert + "_key"]))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source_ip, 0))
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def test_receiver_tcp_tls_udp(home, rpc, pki, tmp_path):
    tcp, tls, udp = free_port(), free_port(), free_port()
    p = ProcessHandle([RADCHAIN, "atna-receiver", "--home", str(home), "--tcp", f"127.0.0.1:{tcp}",
                       "--tls", f"127.0.0.1:{tls}", "--udp", f"127.0.0.1:{udp}", "--cert", str(pki["server"]),
                       "--key", str(pki["server_key"]), "--client-ca", str(pki["ca"])],
                      tmp_path / "atna.log", ready_port=tcp).start()
    try:
        wait_for(lambda: "udp listening" in p.log.read_text(), 10, what="all listeners up")
        # TCP (from loopback, the default atna_allow): a good message, a non-imaging one, a bad line;
        # then framing garbage closes that connection
        with socket.create_connection(("127.0.0.1", tcp), timeout=10) as s:
            s.sendall(frame(syslog(audit_xml(study="1.2.99.1"))) + frame(syslog(audit_xml(event="110114")))
                      + frame(b"<13>1 this is not a syslog header") + frame(syslog(b"<notxml")))
            s.sendall(b"GARBAGE\n")
            assert s.recv(10) == b""  # the receiver hung up on the broken framing
        # mutual TLS: the client certificate (CN=orthanc-a) vouches for AuditSourceID orthanc-a
        with _tls(tls, pki) as s:
            s.sendall(frame(syslog(audit_xml(study="1.2.99.2", event="110104", action="C", source="orthanc-a"))))
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
        assert "127.0.0.1" not in log.replace("listening on 127.0.0.1", "")  # networks only (PHI side channel)
        # still up after the errors
        with socket.create_connection(("127.0.0.1", tcp), timeout=10) as s:
            s.sendall(frame(syslog(audit_xml(study="1.2.99.4"))))
        wait_for(lambda: any(e["study_uid"] == "1.2.99.4" for e in rpc.unique().values()), 10,
                 what="event after errors")
    finally:
        p.stop()


FORGED = "1.2.826.0.1.3680043.666"


def _forged(n: int, source: str = "orthanc-a") -> bytes:
    """A study.deleted for a patient, attributed to a doctor who did nothing."""
    return frame(syslog(audit_xml(event="110105", action="D", study=f"{FORGED}.{n}", user="dr.innocent",
                                  source=source)))


def _spool_text(home) -> str:
    root = home / "spool"
    return "".join(f.read_text(errors="replace") for f in root.rglob("*") if f.is_file())


def test_anonymous_unlisted_and_spoofed_senders_are_refused_and_spool_nothing(pki, tmp_path):
    """The attacks of issue 10 item 1, against the real receiver process: anonymous TLS, a certificate from
    no trusted CA, plain TCP and UDP from an address outside atna_allow (127.0.0.2; the allow-list is
    127.0.0.1), and authenticated senders claiming another source. None leaves a trace in the spool;
    authenticated senders are spooled with the certificate subject (or address) as source."""
    home = write_home(tmp_path / "home", None, None)
    tcp, tls, udp = free_port(), free_port(), free_port()
    p = ProcessHandle([RADCHAIN, "atna-receiver", "--home", str(home), "--no-deliver",
                       "--tls", f"127.0.0.1:{tls}", "--tcp", f"127.0.0.1:{tcp}", "--udp", f"127.0.0.1:{udp}",
                       "--allow", "PACS1@127.0.0.1", "--cert", str(pki["server"]), "--key", str(pki["server_key"]),
                       "--client-ca", str(pki["ca"])], tmp_path / "atna.log", ready_port=tcp).start()

    def refused() -> int:
        return p.log.read_text().count("refused:")

    try:
        wait_for(lambda: "udp listening" in p.log.read_text(), 10, what="all listeners up")
        # 1. anonymous TLS: the handshake fails, whatever the client manages to write
        for cert in (None, "rogue"):
            try:
                with _tls(tls, pki, cert=cert) as s:
                    s.sendall(_forged(1))
                    s.recv(10)
            except (ssl.SSLError, OSError):
                pass
        wait_for(lambda: refused() >= 2, 10, what="two TLS clients refused")
        # 2. plain TCP and UDP from 127.0.0.2, outside the allow-list
        with socket.create_connection(("127.0.0.1", tcp), timeout=10, source_address=("127.0.0.2", 0)) as s:
            try:
                s.sendall(_forged(2))
                assert s.recv(10) == b""  # closed without reading
            except ConnectionResetError:
                pass
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.2", 0))
            s.sendto(_forged(3)[len(str(len(_forged(3)))) + 1:], ("127.0.0.1", udp))
        wait_for(lambda: refused() >= 4, 10, what="TCP and UDP from 127.0.0.2 refused")
        # 3. spoofed sources: an authenticated certificate (CN=orthanc-a) claiming orthanc-b, and an allowed
        #    address bound to PACS1 claiming orthanc-a; the connection is cut after the lie
        with _tls(tls, pki) as s:
            s.sendall(_forged(4, source="orthanc-b"))
            assert s.recv(10) == b""
        with socket.create_connection(("127.0.0.1", tcp), timeout=10) as s:
            s.sendall(_forged(5, source="orthanc-a"))
            assert s.recv(10) == b""
        wait_for(lambda: refused() >= 6, 10, what="spoofed sources refused")
        # 4. the honest senders: mTLS orthanc-a as orthanc-a, and PACS1 from 127.0.0.1
        with _tls(tls, pki) as s:
            s.sendall(frame(syslog(audit_xml(study="1.2.99.10", source="orthanc-a"))))
        with socket.create_connection(("127.0.0.1", tcp), timeout=10) as s:
            s.sendall(frame(syslog(audit_xml(study="1.2.99.11", source="PACS1"))))
        pending = home / "spool" / "pending"
        wait_for(lambda: len(list(pending.glob("*.json"))) == 2, 10, what="the two honest records spooled")
        recs = {json.loads(f.read_bytes())["event"]["study_uid"]: json.loads(f.read_bytes())
                for f in pending.glob("*.json")}
        assert recs["1.2.99.10"]["source"] == "atna-tls:O=RadChain Test,CN=orthanc-a"
        assert recs["1.2.99.10"]["local"]["claimed_source"] == "orthanc-a"
        assert recs["1.2.99.11"]["source"] == "atna-tcp:127.0.0.1"
        # nothing of the forged records anywhere in the spool (pending, journal, tmp, dead)
        text = _spool_text(home)
        assert FORGED not in text and "dr.innocent" not in text and "127.0.0.2" not in text
        log = p.log.read_text()
        assert "sender in 127.0.0.0/24 refused: address not in [dicom] atna_allow" in log
        assert "no valid client certificate" in log and "AuditSourceID 'orthanc-b'" in log
        assert "127.0.0.2" not in log and "127.0.0.1" not in log.replace("listening on 127.0.0.1", "")
        assert p.running() and "Traceback" not in log
        # 5. a flood of refused connections is logged at most 5 times per 10 s per reason
        before = log.count("address not in")
        for _ in range(40):
            with socket.create_connection(("127.0.0.1", tcp), timeout=10, source_address=("127.0.0.2", 0)):
                pass
        with socket.create_connection(("127.0.0.1", tcp), timeout=10) as s:  # a marker after the flood
            s.sendall(frame(syslog(audit_xml(study="1.2.99.12", source="PACS1"))))
        wait_for(lambda: len(list(pending.glob("*.json"))) == 3, 10, what="record after the flood")
        assert p.log.read_text().count("address not in") - before <= 5
        assert len(list(pending.glob("*.json"))) == 3 and FORGED not in _spool_text(home)
    finally:
        p.stop()


def test_tls_without_a_client_ca_does_not_start(pki, tmp_path):
    home = write_home(tmp_path / "home", None, None)
    proc = subprocess.run([RADCHAIN, "atna-receiver", "--home", str(home), "--tls", f"127.0.0.1:{free_port()}",
                           "--cert", str(pki["server"]), "--key", str(pki["server_key"])],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "atna_client_ca" in proc.stderr
