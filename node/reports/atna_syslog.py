"""ATNA out: ledger entries as DICOM audit messages (PS3.15 A.5 XML) over RFC 5424 syslog on RFC 5425 TLS.

A hospital's existing Audit Record Repository or SIEM then sees the consortium's events. The forwarder is a
client of a node's RPC (``audit_trail`` pages, oldest first, with a read token), so it runs wherever the
ARR can be reached and needs nothing from the node beyond reads. Each entry becomes one message:

- EventIdentification: EventID from the tx type (the table in docs/INTEROP.md), EventActionCode,
  EventDateTime (the event's time), EventOutcomeIndicator
- ActiveParticipant: the user token (requestor), the AE title and the peer AE title (RoleIDCode Source or
  Destination where the type implies one)
- AuditSourceIdentification: the member that recorded it
- ParticipantObjectIdentification: the patient token (Person / Patient, RFC-3881 type 2) and the study token
  (System Object / Report, DCM 110180), with NumberOfInstances where known

Only tokens travel, as on the chain. Frames: ``<85>1 TIMESTAMP HOST radchain - IHE+RFC-3881 - BOM XML``
(facility 10 security/authorization, severity 5 notice: ITI-20), octet-counted on the TLS stream
(RFC 5425 §4.3). ``--state FILE`` keeps the audit_trail cursor after each acknowledged write, so a
restarted forwarder resumes after the last entry it wrote (at-least-once: an entry may be sent twice after a crash).
"""

from __future__ import annotations

import socket
import ssl
from datetime import UTC, datetime
from xml.etree import ElementTree as ET

from node.fhir.mapping import DEFAULT_ACTION, EVENT_IDS, PEER_ROLE, TYPE_EVENT
from node.ledger.store import SUFFIX

PRI = 10 * 8 + 5  # facility 10 (security/authorization), severity 5 (notice)
MSGID = "IHE+RFC-3881"
MAX_FRAME = 64 * 1024


def _code(parent, tag: str, code: str, system: str, text: str) -> None:
    ET.SubElement(parent, tag, {"csd-code": code, "codeSystemName": system, "originalText": text})


def audit_message(entry: dict) -> bytes:
    """One audit_trail entry (tokens in hex) -> the PS3.15 A.5 AuditMessage XML (UTF-8)."""
    tx_type = entry["type"]
    event_code = TYPE_EVENT[tx_type]
    root = ET.Element("AuditMessage")
    when = datetime.fromtimestamp(entry["ts"] / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    ev = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": entry.get("action") or DEFAULT_ACTION.get(tx_type, "E"),
        "EventDateTime": when, "EventOutcomeIndicator": str(entry.get("outcome", 0))})
    _code(ev, "EventID", event_code, "DCM", EVENT_IDS[event_code])
    _code(ev, "EventTypeCode", tx_type, "urn:radchain:tx-type", tx_type)
    if "purpose" in entry:
        _code(ev, "PurposeOfUse", entry["purpose"], "2.16.840.1.113883.5.8", entry["purpose"])
    if "user" in entry:
        ET.SubElement(root, "ActiveParticipant", {"UserID": entry["user"], "UserIsRequestor": "true"})
    if "ae" in entry:
        ap = ET.SubElement(root, "ActiveParticipant", {
            "UserID": entry["ae"], "AlternativeUserID": entry["ae"],
            "UserIsRequestor": "false" if "user" in entry else "true", "UserTypeCode": "2"})
        _code(ap, "RoleIDCode", "110150", "DCM", "Application")
    if "peer_ae" in entry:
        code, text = PEER_ROLE.get(tx_type, ("110150", "Application"))
        ap = ET.SubElement(root, "ActiveParticipant", {
            "UserID": entry["peer_ae"], "AlternativeUserID": entry["peer_ae"], "UserIsRequestor": "false"})
        _code(ap, "RoleIDCode", code, "DCM", text)
    ET.SubElement(root, "AuditSourceIdentification", {"AuditEnterpriseSiteID": entry["member"],
                                                      "AuditSourceID": entry["member"]})
    if "patient" in entry:
        po = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": entry["patient"], "ParticipantObjectTypeCode": "1",
            "ParticipantObjectTypeCodeRole": "1"})
        _code(po, "ParticipantObjectIDTypeCode", "2", "RFC-3881", "Patient Number")
    if "study" in entry:
        po = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": entry["study"], "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3"})
        _code(po, "ParticipantObjectIDTypeCode", "110180", "DCM", "Study Instance UID")
        if "n_instances" in entry:
            desc = ET.SubElement(po, "ParticipantObjectDescription")
            ET.SubElement(desc, "NumberOfInstances").text = str(entry["n_instances"])
    po = ET.SubElement(root, "ParticipantObjectIdentification", {
        "ParticipantObjectID": entry["hash"], "ParticipantObjectTypeCode": "2",
        "ParticipantObjectTypeCodeRole": "4"})
    _code(po, "ParticipantObjectIDTypeCode", "tx", "urn:radchain:tx-hash", "RadChain tx hash")
    return ET.tostring(root, encoding="utf-8", xml_declaration=False)


def syslog_frame(xml: bytes, ts_ms: int, hostname: str = "-") -> bytes:
    """RFC 5424 message (BOM + UTF-8 XML), octet-counted for a TLS stream (RFC 5425)."""
    stamp = datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    host = (hostname or "-")[:255].replace(" ", "_")
    msg = f"<{PRI}>1 {stamp} {host} radchain - {MSGID} - ".encode() + b"\xef\xbb\xbf" + xml
    if len(msg) > MAX_FRAME:
        raise ValueError(f"audit message of {len(msg)} bytes exceeds {MAX_FRAME}")
    return str(len(msg)).encode() + b" " + msg


def tls_context(ca: str, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """Client context: the ARR's certificate must chain to `ca` and name the host; mutual TLS with cert/key
    (ITI-19 Authenticate Node)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


class SyslogTlsSender:
    def __init__(self, host: str, port: int, context: ssl.SSLContext, timeout: float = 10.0):
        self.host, self.port, self.context, self.timeout = host, port, context, timeout
        self.sock: ssl.SSLSocket | None = None

    def __enter__(self) -> SyslogTlsSender:
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        self.sock = self.context.wrap_socket(raw, server_hostname=self.host)
        return self

    def send(self, frame: bytes) -> None:
        assert self.sock is not None, "use as a context manager"
        self.sock.sendall(frame)

    def __exit__(self, *exc) -> None:
        if self.sock is not None:
            try:
                self.sock.unwrap()  # close_notify: the receiver knows nothing was cut
            except (OSError, ssl.SSLError):
                pass
            self.sock.close()
            self.sock = None


def forward(client, sender: SyslogTlsSender, filters: dict, cursor: str | None = None,
            on_cursor=None, hostname: str = "-", page: int = 500) -> int:
    """Send every audit_trail entry matching `filters` after `cursor`; returns how many were sent.
    `on_cursor(c)` gets the position after each sent entry (persist it to resume exactly there)."""
    sent = 0
    while True:
        params = {**filters, "limit": page}
        if cursor:
            params["cursor"] = cursor
        res = client.call("audit_trail", params)
        for entry in res["entries"]:
            if entry["type"] in TYPE_EVENT:
                sender.send(syslog_frame(audit_message(entry), entry["ts"], hostname))
                sent += 1
            if on_cursor is not None:
                on_cursor(SUFFIX.pack(entry["ts"], entry["height"], entry["index"]).hex())
        cursor = res["next_cursor"]
        if cursor is None:
            return sent
