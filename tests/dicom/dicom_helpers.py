"""Helpers for the DICOM hook tests (imported by conftest.py and the tests): Orthanc (+ the RadChain plugin), dcmtk, a JSON-RPC recorder.

Ports are free ports on 127.0.0.1. Every external client runs under a timeout. Orthanc starts once per
session (about 2 s). Nothing sleeps and hopes: `wait_for` polls a condition against a deadline.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import xml.etree.ElementTree as _ET
from pathlib import Path

import pytest

from node.testnet import free_port

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
RADCHAIN = str(VENV_BIN / "radchain")
CLIENT_TIMEOUT = 60  # seconds, for every dcmtk client call
ENV = {**os.environ, "TCP_NODELAY": "1"}


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def run_tool(args: list[str], timeout: float = CLIENT_TIMEOUT, check: bool = True) -> subprocess.CompletedProcess:
    """Run a dcmtk (or other) client with TCP_NODELAY=1 under a hard timeout."""
    proc = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def need(*binaries: str) -> None:
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (run `bash deploy/install-system-deps.sh test`)")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


# -- test data ----------------------------------------------------------------------------------------------


def sample_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} not bundled")
    return Path(path)


def make_instances(out: Path, n: int, *, patient_id: str = "RC-TEST-PAT", study_uid: str | None = None,
                   patient_name: str = "Radchain^Testpatient") -> tuple[list[Path], str]:
    """n valid CT instances (CT_small.dcm with new UIDs) in one study; returns (paths, study uid)."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    out.mkdir(parents=True, exist_ok=True)
    base = dcmread(sample_file("CT_small.dcm"))
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    paths = []
    for i in range(n):
        ds = base.copy()
        ds.PatientID = patient_id
        ds.PatientName = patient_name
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        p = out / f"inst_{i:04d}.dcm"
        ds.save_as(p)
        paths.append(p)
    return paths, study_uid


# -- a real HTTP JSON-RPC peer standing in for the node ----------------------------------------------------
class RpcRecorder:
    """A small JSON-RPC 2.0 server (stdlib http.server): records `submit_event` calls, answers like the node.
    `refuse_types` get a validation error; `stop()`/`start()` simulate the node going down and coming back."""

    def __init__(self, token: str = "dicom-test-token-0123456789"):
        self.token = token
        self.port = free_port()
        self.events: list[dict] = []
        self.by_id: dict[str, dict] = {}
        self.refuse_types: set[str] = set()
        self.unauthorized = 0
        self.batches = 0
        self._server = None
        self._lock = threading.Lock()

    def _answer(self, req: dict) -> dict:
        event = req["params"]["event"]
        if event.get("type") in self.refuse_types:
            return {"jsonrpc": "2.0", "id": req["id"], "error": {
                "code": -32602, "message": "invalid event", "data": {"reason": "type refused by test",
                                                                     "field": "type"}}}
        tx = hashlib.sha256(event["event_id"].encode()).hexdigest()
        with self._lock:
            self.events.append(event)
            self.by_id[event["event_id"]] = event
        return {"jsonrpc": "2.0", "id": req["id"], "result": {"tx": tx, "status": "pending"}}

    def _handler(self):
        rec = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Authorization") != f"Bearer {rec.token}":
                    rec.unauthorized += 1
                    self._send(401, {"jsonrpc": "2.0", "id": None, "error": {"code": -32001, "message": "unauthorized"}})
                    return
                req = json.loads(body)
                if isinstance(req, list):
                    rec.batches += 1
                    self._send(200, [rec._answer(r) for r in req])
                else:
                    self._send(200, rec._answer(req))

            def _send(self, code, doc):
                data = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
        return Handler

    def start(self):
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def unique(self) -> dict[str, dict]:
        with self._lock:
            return dict(self.by_id)


def write_home(home: Path, rpc_listen: str | None, token: str | None, **dicom) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    lines = ['[node]', 'name = "hosp-test"', '']
    if rpc_listen:
        lines += ['[rpc]', f'listen = "{rpc_listen}"', f'tokens = {{ dicom = "{token}" }}', '']
    lines += ['[dicom]', 'issuer = "HOSP-TEST"', 'purpose = "TREAT"']
    for k, v in dicom.items():
        lines.append(f"{k} = {json.dumps(v)}")
    (home / "config.toml").write_text("\n".join(lines) + "\n")
    return home


def spooled_events(home: Path) -> list[dict]:
    events = []
    for p in sorted((home / "spool" / "pending").glob("*.json")):
        try:
            events.append(json.loads(p.read_bytes())["event"])
        except FileNotFoundError:
            continue  # delivered (and removed) between listing and reading: no longer pending
    return events


# -- Orthanc ---------------------------------------------------------------------------------------------------
class Orthanc:
    def __init__(self, root: Path, *, plugin: bool = True):
        self.root = root
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.aet = "ORTHANC"
        self.store_scp_port = free_port()   # dcmtk storescp: C-MOVE destination "STORESCP"
        self.movescu_port = free_port()     # movescu receiving its own C-MOVE
        self.home = root / "radchain-home"
        self.plugin = plugin
        self.proc = None

    def config(self) -> dict:
        cfg = {
            "Name": "RADCHAIN-TEST-PACS",
            "StorageDirectory": str(self.root / "storage"), "IndexDirectory": str(self.root / "storage"),
            "HttpServerEnabled": True, "HttpPort": self.http_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "HttpDescribeErrors": True,
            "DicomServerEnabled": True, "DicomAet": self.aet, "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False, "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True, "DicomAlwaysAllowGet": True, "DicomAlwaysAllowMove": True,
            "DicomCheckModalityHost": False,
            "DicomModalities": {"storescp": ["STORESCP", "127.0.0.1", self.store_scp_port],
                                "movescu": ["MOVESCU", "127.0.0.1", self.movescu_port]},
            "SynchronousCMove": True, "StableAge": 3, "MaximumStorageCacheSize": 0, "SaveJobs": False,
            "Plugins": [], "ConcurrentJobs": 2,
        }
        if self.plugin:
            cfg["Plugins"] = ["/usr/share/orthanc/plugins/libOrthancPython.so"]
            cfg["PythonScript"] = str(REPO / "deploy" / "orthanc" / "radchain_plugin.py")
            cfg["RadChain"] = {"Home": str(self.home), "SourceDir": str(REPO), "RecordDicomStores": True,
                               "Deliver": True}
            if Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so").exists():
                cfg["Plugins"].append("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
                cfg["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado"}
        return cfg

    def start(self):
        self.root.mkdir(parents=True, exist_ok=True)
        cfg_path = self.root / "orthanc.json"
        cfg_path.write_text(json.dumps(self.config(), indent=1))
        log = open(self.root / "orthanc.log", "ab")
        self.proc = subprocess.Popen(["Orthanc", str(cfg_path)], env=ENV, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for(lambda: self.proc.poll() is not None or self.alive(), 30, 0.1, "Orthanc HTTP")
        if self.proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited: {(self.root / 'orthanc.log').read_text()[-3000:]}")
        wait_for(lambda: port_open(self.dicom_port), 10, 0.05, "Orthanc DICOM port")
        return self

    def alive(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/system", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def get(self, path: str, headers: dict | None = None):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", headers=headers or {})
        with urllib.request.urlopen(req, timeout=20) as r:
            data = r.read()
            return json.loads(data) if r.headers.get_content_type() == "application/json" else data

    def post(self, path: str, body: bytes | str, content_type: str = "application/json"):
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}",
                                     data=body.encode() if isinstance(body, str) else body,
                                     headers={"Content-Type": content_type}, method="POST")
        with urllib.request.urlopen(req, timeout=20) as r:
            return json.loads(r.read())

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# -- the proxy as the real command ----------------------------------------------------------------------------
class ProcessHandle:
    def __init__(self, args: list[str], log: Path, ready_port: int | None = None, env: dict | None = None):
        self.args = args
        self.log = log
        self.ready_port = ready_port
        self.env = env or ENV
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        if self.ready_port:
            wait_for(lambda: self.proc.poll() is not None or port_open(self.ready_port), 20, 0.05,
                     f"{self.args[1]} to listen")
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args} exited:\n{self.log.read_text()[-3000:]}")
        return self

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def start_proxy(home: Path, orthanc: Orthanc, *extra: str) -> tuple[ProcessHandle, int]:
    port = free_port()
    p = ProcessHandle([RADCHAIN, "dicom-proxy", "--home", str(home), "--listen", f"127.0.0.1:{port}",
                       "--pacs", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}", *extra],
                      home.parent / f"proxy-{port}.log", ready_port=port)
    return p.start(), port


# -- a hand-made SCU that can put malformed bytes on the wire (pynetdicom and dcmtk re-encode) -------------
def _item(item_type: int, payload: bytes) -> bytes:
    return bytes([item_type, 0]) + struct.pack(">H", len(payload)) + payload


def associate_rq(calling: str = "MODALITY1", called: str = "ORTHANC",
                 sop_class: str = "1.2.840.10008.5.1.4.1.1.2", ts: str = "1.2.840.10008.1.2") -> bytes:
    """An A-ASSOCIATE-RQ proposing one presentation context (id 1) and a 16 KiB maximum PDU."""
    ctx = bytes([1, 0, 0, 0]) + _item(0x30, sop_class.encode()) + _item(0x40, ts.encode())
    user = _item(0x51, struct.pack(">I", 16384))
    body = (struct.pack(">H", 1) + b"\0\0" + called.encode().ljust(16) + calling.encode().ljust(16) + bytes(32)
            + _item(0x10, b"1.2.840.10008.3.1.1.1") + _item(0x20, ctx) + _item(0x50, user))
    return bytes([1, 0]) + struct.pack(">I", len(body)) + body


def command_set(sop_class: str, command_field: int, *, message_id: int = 1, has_dataset: bool = True,
                sop_uid: str | None = None, move_destination: str | None = None) -> bytes:
    """A DIMSE command set, implicit VR little endian, with its CommandGroupLength."""
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    cmd = Dataset()
    cmd.AffectedSOPClassUID = sop_class
    cmd.CommandField = command_field
    cmd.MessageID = message_id
    if command_field != 0x0030:  # C-ECHO-RQ has no priority
        cmd.Priority = 0
    cmd.CommandDataSetType = 0x0000 if has_dataset else 0x0101
    if sop_uid:
        cmd.AffectedSOPInstanceUID = sop_uid
    if move_destination:
        cmd.MoveDestination = move_destination
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_dataset(buf, cmd)
    raw = buf.getvalue()
    return b"\x00\x00\x00\x00\x04\x00\x00\x00" + struct.pack("<I", len(raw)) + raw


def p_data(payload: bytes, header: int, context_id: int = 1) -> bytes:
    """A P-DATA-TF carrying one PDV (header 0x03: last command fragment, 0x02: last data set fragment)."""
    item = struct.pack(">I", len(payload) + 2) + bytes([context_id, header]) + payload
    return bytes([4, 0]) + struct.pack(">I", len(item)) + item


def raw_store(port: int, dataset: bytes, *, calling: str = "MODALITY1", called: str = "ORTHANC",
              sop_class: str = "1.2.840.10008.5.1.4.1.1.2", sop_uid: str | None = "1.2.3.4.5.6.7.8.9",
              timeout: float = 20.0, ts: str = "1.2.840.10008.1.2", command_field: int = 0x0001,
              move_destination: str | None = None) -> bytes:
    """Associate (transfer syntax `ts`, implicit VR LE by default), send one request (C-STORE by default;
    0x0020 for C-FIND with sop_class a FIND model) with `dataset` bytes as-is, return what came back."""
    rq = associate_rq(calling, called, sop_class, ts)
    raw = command_set(sop_class, command_field, sop_uid=sop_uid, move_destination=move_destination)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(rq)
        first = s.recv(65536)
        if not first or first[0] != 2:
            return first
        # data set fragments within the PACS's 16 KiB maximum PDU (what Orthanc/dcmtk accept by default)
        chunks = [dataset[i:i + 16000] for i in range(0, len(dataset), 16000)] or [b""]
        s.sendall(p_data(raw, 0x03) + b"".join(p_data(c, 0x02 if i == len(chunks) - 1 else 0x00)
                                            for i, c in enumerate(chunks)))
        got = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
                if got[:1] == b"\x04" and len(got) >= 6 + struct.unpack(">I", got[2:6])[0]:
                    s.sendall(bytes([5, 0, 0, 0, 0, 4, 0, 0, 0, 0]))  # A-RELEASE-RQ
                if got and got[0] in (6, 7) or b"\x06\x00\x00\x00\x00\x04" in got:
                    break
        except (TimeoutError, ConnectionError):
            pass
        return got


# -- DICOM audit messages (PS3.15 A.5) over syslog ------------------------------------------------------------
def audit_xml(*, event="110103", action="R", patient="RC-ATNA-1^^^HOSP-X", study="1.2.826.0.1.3680043.99.1",
              sops=("1.2.3.1", "1.2.3.2"), user="dr.jones", when="2026-11-27T10:00:00Z",
              source="viewer-host") -> bytes:
    root = _ET.Element("AuditMessage")
    ev = _ET.SubElement(root, "EventIdentification", EventActionCode=action, EventDateTime=when,
                       EventOutcomeIndicator="0")
    _ET.SubElement(ev, "EventID", {"csd-code": event, "codeSystemName": "DCM", "originalText": "x"})
    _ET.SubElement(root, "ActiveParticipant", UserID="viewer-17", UserName=user, UserIsRequestor="true",
                  AlternativeUserID="AETITLES=VIEWER1", NetworkAccessPointID="10.0.0.5",
                  NetworkAccessPointTypeCode="2")
    _ET.SubElement(root, "ActiveParticipant", UserID="pacs", UserIsRequestor="false",
                  AlternativeUserID="AETITLES=PACS1")
    if source is not None:
        _ET.SubElement(root, "AuditSourceIdentification", AuditSourceID=source)
    if study:
        st = _ET.SubElement(root, "ParticipantObjectIdentification", ParticipantObjectID=study,
                           ParticipantObjectTypeCode="2", ParticipantObjectTypeCodeRole="3")
        _ET.SubElement(st, "ParticipantObjectIDTypeCode", {"csd-code": "110180", "codeSystemName": "DCM"})
        sc = _ET.SubElement(st, "SOPClass", UID="1.2.840.10008.5.1.4.1.1.2", NumberOfInstances=str(len(sops)))
        for uid in sops:
            _ET.SubElement(sc, "Instance", UID=uid)
    if patient:
        pt = _ET.SubElement(root, "ParticipantObjectIdentification", ParticipantObjectID=patient,
                           ParticipantObjectTypeCode="1", ParticipantObjectTypeCodeRole="1")
        _ET.SubElement(pt, "ParticipantObjectIDTypeCode", code="2")
    return _ET.tostring(root)


def syslog(xml: bytes, host="viewer-host") -> bytes:
    return (f"<85>1 2026-11-27T10:00:01.000Z {host} VIEWER - IHE+RFC-3881 - ".encode() + b"\xef\xbb\xbf" + xml)


def frame(msg: bytes) -> bytes:
    return str(len(msg)).encode() + b" " + msg




# -- test PKI for ATNA mutual TLS (cryptography) ---------------------------------------------------------------
def make_pki(out: Path) -> dict[str, Path]:
    """A CA, a server certificate (CN=localhost, SAN IP 127.0.0.1), a client certificate CN=orthanc-a signed by
    the CA, and a rogue client certificate with the same CN signed by nobody trusted. PEM files in `out`."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    files: dict[str, Path] = {}

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "RadChain Test"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(label: str, key, cert) -> None:
        files[label + "_key"] = out / f"{label}.key"
        files[label + "_key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                            serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))
        files[label] = out / f"{label}.pem"
        files[label].write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def issue(subject: str, issuer_name, issuer_key, *, ca=False, san=None, usage=None):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer_name or name(subject))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        if usage:
            b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        return key, b.sign(issuer_key or key, hashes.SHA256())

    import ipaddress
    ca_key, ca_cert = issue("RadChain Test ATNA CA", None, None, ca=True)
    write("ca", ca_key, ca_cert)
    write("server", *issue("localhost", ca_cert.subject, ca_key, usage=ExtendedKeyUsageOID.SERVER_AUTH,
                           san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]))
    write("client", *issue("orthanc-a", ca_cert.subject, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH))
    write("rogue", *issue("orthanc-a", None, None, usage=ExtendedKeyUsageOID.CLIENT_AUTH))
    return files


# -- hostile DICOM (issue 10 item 4) ---------------------------------------------------------------------------
DEFLATED_LE = "1.2.840.10008.1.2.1.99"


def _el(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element."""
    if len(value) % 2:
        value += b"\0" if vr == b"UI" else b" "
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
        return struct.pack("<HH2sxxI", group, elem, vr, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def dicom_file(dataset: bytes, ts: str) -> bytes:
    """PS3.10 file: preamble, DICM, a minimal meta group naming transfer syntax `ts`, then `dataset`."""
    meta = _el(0x0002, 0x0001, b"OB", b"\0\1") + _el(0x0002, 0x0010, b"UI", ts.encode())
    return bytes(128) + b"DICM" + _el(0x0002, 0x0000, b"UL", struct.pack("<I", len(meta))) + meta + dataset


def ident_elements(patient: str = "RC-BOMB-1", study: str = "1.2.826.0.1.3680043.777.1") -> bytes:
    return (_el(0x0008, 0x0016, b"UI", b"1.2.840.10008.5.1.4.1.1.7")
            + _el(0x0008, 0x0018, b"UI", b"1.2.826.0.1.3680043.777.2")
            + _el(0x0010, 0x0020, b"LO", patient.encode()) + _el(0x0020, 0x000D, b"UI", study.encode()))


def nested_sequences(depth: int = 3000, explicit: bool = True, close: bool = True) -> bytes:
    """`depth` undefined-length sequences, each in an undefined-length item of the one before."""
    sq = (struct.pack("<HH2sxxI", 0x0040, 0xA730, b"SQ", 0xFFFFFFFF) if explicit
          else struct.pack("<HHI", 0x0040, 0xA730, 0xFFFFFFFF))
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return (sq + item) * depth + (end * depth if close else b"")


def deflate_bomb(inflated: int = 200 << 20) -> bytes:
    """A deflated data set (raw deflate) that inflates to `inflated` bytes: identifiers, then one huge OB
    element of zeros. 200 MiB deflates to about 200 KB."""
    import zlib
    head = ident_elements() + struct.pack("<HH2sxxI", 0x0009, 0x1010, b"OB", inflated)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = [c.compress(head)]
    zero = bytes(1 << 20)
    for _ in range(inflated >> 20):
        out.append(c.compress(zero))
    out.append(c.flush())
    return b"".join(out)


def truncated_meta_file() -> bytes:
    """DICM, then a long-VR meta element header cut after 10 of its 12 bytes (once a struct.error)."""
    return bytes(128) + b"DICM" + b"\x02\x00\x01\x00OB\x00\x00\x02\x00"
