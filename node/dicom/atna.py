"""ATNA receiver: DICOM audit messages (PS3.15 A.5 XML) over syslog become raw events.

Transports (IHE ITI-20): RFC 5424 messages over TCP with octet-counting framing (RFC 6587 3.4.1; LF-terminated
non-transparent framing, RFC 6587 3.4.2, is accepted too), over TLS (RFC 5425, same framing), and over UDP
(RFC 5426, one message per datagram). The parsing below is sans-I/O; `AtnaReceiver` does the sockets.

Mapping (node.vocabulary.EVENT_ID_TYPES): 110103 -> instances.accessed, 110104 -> instances.transferred,
110102 -> transfer.begin, 110112 -> query, 110106 -> export, 110107 -> import, 110105 -> study.deleted.
Other EventIDs (application activity, logins, security alerts ...) have no patient/study: journaled only.
One event per study named in the message; event_id is a digest of the XML, so a retransmitted message is the
same tx.

Who may send (a forged `study.deleted` attributed to a doctor would be signed and committed by this node):

* TLS is mutual (IHE ITI-19): a client without a certificate signed by `atna_client_ca` fails the handshake.
  The certificate subject is the authenticated source: the spool record's `source` is
  "atna-tls:<subject>", and each message's claimed source (AuditSourceIdentification/@AuditSourceID) must be
  the certificate's CN or one of its subjectAltName DNS/IP names.
* Plain TCP and UDP exist only when configured (`atna_tcp`, `atna_udp`) and take only senders whose address
  is in `atna_allow` (default loopback). An entry "SOURCE@ADDR" also binds the claimed AuditSourceID.
* A refused sender (no certificate, address not allowed, claimed source not its own) gets one rate-limited
  log line and nothing else: no spool entry, no journal line, no parse beyond what refusing needs.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import ssl
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime

from node.dicom import records
from node.dicom.logsafe import RateLimitedLog, net_label
from node.dicom.settings import DEFAULT_ATNA_ALLOW, parse_allow
from node.dicom.spool import Spool
from node.vocabulary import ALLOWED_ACTIONS, DEFAULT_ACTION, EVENT_ID_TYPES

log = logging.getLogger("radchain.dicom.atna")
HANDSHAKE_SECONDS = 10.0  # a TLS client must finish its handshake (and show its certificate) by then

MAX_MESSAGE = 1 << 20  # bytes; an audit message is a few KiB (RFC 5425 4.3.1 asks receivers for >= 8192)


class SyslogError(ValueError):
    """Bytes that are not an RFC 5424 syslog message, or broken framing."""


class AuditMessageError(ValueError):
    """A syslog message whose MSG is not a usable DICOM audit message."""


# -- framing -------------------------------------------------------------------------------------------------
class Framer:
    """RFC 6587 framing for a TCP/TLS stream: feed(bytes) -> [message bytes]. Octet counting
    ("123 <pri>1 ...") when a frame starts with a digit, else LF-terminated messages. Broken framing loses
    sync for good: feed() returns the messages before it and sets `error` (a SyslogError); the caller
    handles those messages, then closes the connection."""

    def __init__(self, max_message: int = MAX_MESSAGE):
        self._buf = bytearray()
        self.max_message = max_message
        self.error: SyslogError | None = None

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        if self.error is not None:
            return out
        self._buf += data
        try:
            self._split(out)
        except SyslogError as exc:
            self.error = exc
            self._buf.clear()
        return out

    def _split(self, out: list[bytes]) -> None:
        while self._buf:
            if self._buf[:1].isdigit():
                space = self._buf.find(b" ", 0, 12)
                if space < 0:
                    if len(self._buf) >= 12:
                        raise SyslogError(f"octet-counting frame without a length: {bytes(self._buf[:20])!r}")
                    break
                digits = bytes(self._buf[:space])
                if not digits.isdigit() or digits.startswith(b"0"):
                    raise SyslogError(f"bad MSG-LEN {digits!r} in octet-counting frame (RFC 6587 3.4.1)")
                length = int(digits)
                if length > self.max_message:
                    raise SyslogError(f"message of {length} bytes exceeds the {self.max_message} limit")
                if len(self._buf) < space + 1 + length:
                    break
                out.append(bytes(self._buf[space + 1:space + 1 + length]))
                del self._buf[:space + 1 + length]
            elif self._buf[:1] == b"<":
                nl = self._buf.find(b"\n")
                if nl < 0:
                    if len(self._buf) > self.max_message:
                        raise SyslogError("LF-framed message exceeds the size limit")
                    break
                out.append(bytes(self._buf[:nl]).rstrip(b"\r"))
                del self._buf[:nl + 1]
            elif self._buf[:1] in (b"\n", b"\r", b" "):
                del self._buf[:1]
            else:
                raise SyslogError(f"frame starts with {bytes(self._buf[:20])!r}: neither a MSG-LEN nor '<PRI>'")


# -- RFC 5424 --------------------------------------------------------------------------------------------------
@dataclass
class SyslogMessage:
    facility: int
    severity: int
    timestamp: str | None
    hostname: str | None
    app_name: str | None
    procid: str | None
    msgid: str | None
    structured_data: str | None
    msg: bytes


_HEADER = re.compile(rb"^<(\d{1,3})>(\d{1,2}) (\S+) (\S+) (\S+) (\S+) (\S+) ")


def _nil(v: bytes) -> str | None:
    return None if v == b"-" else v.decode("utf-8", "replace")


def parse_syslog(raw: bytes) -> SyslogMessage:
    """RFC 5424 6: HEADER SP STRUCTURED-DATA [SP MSG]."""
    m = _HEADER.match(raw)
    if not m:
        raise SyslogError(f"not an RFC 5424 message (expected '<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD'): "
                          f"{raw[:60]!r}")
    pri = int(m.group(1))
    if pri > 191:
        raise SyslogError(f"PRI {pri} out of range (RFC 5424 6.2.1)")
    if m.group(2) != b"1":
        raise SyslogError(f"syslog VERSION {m.group(2).decode()} unsupported (RFC 5424 is version 1)")
    pos = m.end()
    # STRUCTURED-DATA: "-" or one or more [id param="value" ...] with \", \\ and \] escapes (RFC 5424 6.3)
    if raw[pos:pos + 1] == b"-":
        sd, pos = None, pos + 1
    elif raw[pos:pos + 1] == b"[":
        start = pos
        while raw[pos:pos + 1] == b"[":
            in_quotes = False
            pos += 1
            while pos < len(raw):
                c = raw[pos:pos + 1]
                if c == b"\\" and in_quotes:
                    pos += 2
                    continue
                if c == b'"':
                    in_quotes = not in_quotes
                elif c == b"]" and not in_quotes:
                    break
                pos += 1
            else:
                raise SyslogError("unterminated STRUCTURED-DATA element")
            pos += 1
        sd = raw[start:pos].decode("utf-8", "replace")
    else:
        raise SyslogError("STRUCTURED-DATA must be '-' or start with '['")
    if pos < len(raw) and raw[pos:pos + 1] != b" ":
        raise SyslogError("no space between STRUCTURED-DATA and MSG")
    msg = raw[pos + 1:]
    if msg.startswith(b"\xef\xbb\xbf"):
        msg = msg[3:]  # the BOM announcing UTF-8 (RFC 5424 6.4)
    return SyslogMessage(pri >> 3, pri & 7, _nil(m.group(3)), _nil(m.group(4)), _nil(m.group(5)),
                         _nil(m.group(6)), _nil(m.group(7)), sd, msg)


# -- PS3.15 A.5 audit message ------------------------------------------------------------------------------------


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(el, name):
    return [c for c in el if _local(c.tag) == name]


def _code(el) -> str | None:
    """A coded value: attribute csd-code (DICOM schema) or code (RFC 3881 schema)."""
    if el is None:
        return None
    return el.get("csd-code") or el.get("code")


def _split_cx(pid: str) -> tuple[str, str | None]:
    """HL7 v2 CX "ID^^^AUTHORITY&OID&ISO" -> (ID, AUTHORITY or OID)."""
    if "^" not in pid:
        return pid, None
    parts = pid.split("^")
    authority = parts[3] if len(parts) > 3 else ""
    namespace = [a for a in authority.split("&") if a][:2]
    return parts[0], (namespace[0] if namespace else None)


def _ae_of(participant) -> str | None:
    alt = participant.get("AlternativeUserID") or ""
    m = re.search(r"AETITLES=([^;\s]+)", alt)
    if m:
        return m.group(1)[:16]
    return None


def _parse_time(text: str | None) -> int | None:
    if not text:
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        return None
    return int(dt.timestamp() * 1000)


def parse_audit_message(xml: bytes, *, purpose: str, default_issuer: str) -> tuple[str, list[dict]]:
    """XML -> (EventID code, raw events). Raises AuditMessageError with a clear reason."""
    code, events, _ = parse_audit(xml, purpose=purpose, default_issuer=default_issuer)
    return code, events


def parse_audit(xml: bytes, *, purpose: str, default_issuer: str) -> tuple[str, list[dict], str | None]:
    """XML -> (EventID code, raw events, claimed AuditSourceID or None)."""
    if b"<!DOCTYPE" in xml or b"<!ENTITY" in xml:
        # expat expands internal entities (billion laughs); an audit message never needs a DTD
        raise AuditMessageError("MSG has a DTD or entity declaration; refused")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise AuditMessageError(f"MSG is not XML: {exc}") from exc
    if _local(root.tag) != "AuditMessage":
        raise AuditMessageError(f"root element is <{_local(root.tag)}>, not <AuditMessage> (PS3.15 A.5)")
    source_el = next(iter(_children(root, "AuditSourceIdentification")), None)
    claimed = source_el.get("AuditSourceID") if source_el is not None else None
    code, events = _events_of(root, xml, purpose, default_issuer)
    return code, events, claimed


def _events_of(root, xml: bytes, purpose: str, default_issuer: str) -> tuple[str, list[dict]]:
    ident = next(iter(_children(root, "EventIdentification")), None)
    if ident is None:
        raise AuditMessageError("no EventIdentification")
    event_code = _code(next(iter(_children(ident, "EventID")), None))
    if not event_code:
        raise AuditMessageError("EventIdentification has no EventID code")
    kind = EVENT_ID_TYPES.get(event_code)
    if kind is None:
        return event_code, []
    action = ident.get("EventActionCode") or DEFAULT_ACTION[kind]
    if action not in ALLOWED_ACTIONS[kind]:
        action = DEFAULT_ACTION[kind]
    try:
        outcome = int(ident.get("EventOutcomeIndicator", "0"))
    except ValueError:
        raise AuditMessageError(f"EventOutcomeIndicator {ident.get('EventOutcomeIndicator')!r} is not a number") from None
    if outcome not in (0, 4, 8, 12):
        raise AuditMessageError(f"EventOutcomeIndicator {outcome} is not 0, 4, 8 or 12")
    when = _parse_time(ident.get("EventDateTime"))
    if when is None:
        raise AuditMessageError(f"EventDateTime {ident.get('EventDateTime')!r} is not ISO 8601 with a timezone")

    participants = _children(root, "ActiveParticipant")
    requestors = [p for p in participants if (p.get("UserIsRequestor") or "").lower() == "true"]
    others = [p for p in participants if p not in requestors]
    req = requestors[0] if requestors else (participants[0] if participants else None)
    if req is None:
        raise AuditMessageError("no ActiveParticipant: who did it is unknown")
    actor = req.get("UserName") or req.get("UserID")
    actor_ae = _ae_of(req)
    peer_ae = next((a for a in (_ae_of(p) for p in others) if a), None)

    patients, studies = [], []
    for obj in _children(root, "ParticipantObjectIdentification"):
        type_code, role = obj.get("ParticipantObjectTypeCode"), obj.get("ParticipantObjectTypeCodeRole")
        id_type = _code(next(iter(_children(obj, "ParticipantObjectIDTypeCode")), None))
        oid = obj.get("ParticipantObjectID")
        if not oid:
            continue
        if type_code == "1" and role == "1":
            patients.append(_split_cx(oid))
        elif id_type == "110180":
            sops, n, series = [], None, []
            # SOPClass is a child of the object in PS3.15's schema, of ParticipantObjectDescription in
            # RFC 3881-style messages: take it wherever it is
            for sc in (e for e in obj.iter() if _local(e.tag) == "SOPClass"):
                try:
                    n = (n or 0) + int(sc.get("NumberOfInstances", "0"))
                except ValueError:
                    pass
                sops += [i.get("UID") for i in _children(sc, "Instance") if i.get("UID")]
            for detail in _children(obj, "ParticipantObjectDetail"):
                if detail.get("type") == "SeriesInstanceUID" and detail.get("value"):
                    series.append(detail.get("value"))
            studies.append((oid, sops, n, series))
    if not patients:
        raise AuditMessageError(f"EventID {event_code}: no patient participant object (TypeCode 1, role 1)")
    patient, issuer = patients[0]
    if not studies:
        if kind != "query":
            raise AuditMessageError(f"EventID {event_code}: no study participant object (IDTypeCode 110180)")
        studies = [(None, [], None, [])]
    digest = hashlib.sha256(xml).hexdigest()
    events = []
    for i, (study, sops, n, series) in enumerate(studies):
        for j in range(0, max(len(sops), 1), records.MAX_LIST):
            chunk = sops[j:j + records.MAX_LIST]
            e = records.base_event(
                kind, patient_id=patient, issuer=issuer, study_uid=study, actor=actor or actor_ae or "",
                purpose=purpose, default_issuer=default_issuer, when_ms=when, actor_ae=actor_ae, peer_ae=peer_ae,
                series_uids=series or None, sop_instance_uids=chunk or None,
                n_instances=len(chunk) if chunk else n, outcome=outcome, action=action)
            e["event_id"] = f"atna-{digest[:40]}-{i}-{j // records.MAX_LIST}"
            events.append(e)
    return event_code, events


# -- the receiver -----------------------------------------------------------------------------------------------
@dataclass
class Sender:
    """An authenticated sender: `identity` is what the spool records as the source; `names` the
    AuditSourceIDs it may claim (None: any, for an allow-list entry that binds no name)."""

    transport: str
    address: str                      # ip, for the journal only (never logged: logsafe.py)
    identity: str
    names: frozenset[str] | None

    def may_claim(self, claimed: str | None) -> bool:
        if self.names is None:
            return True
        return claimed is not None and claimed.casefold() in self.names


def cert_subject(cert: dict) -> str:
    """'CN=orthanc-a,O=Hospital A' from ssl's getpeercert() dict, in the certificate's order."""
    short = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
             "localityName": "L", "stateOrProvinceName": "ST", "emailAddress": "emailAddress"}
    parts = [f"{short.get(k, k)}={v}" for rdn in cert.get("subject", ()) for k, v in rdn]
    return ",".join(parts)


def cert_names(cert: dict) -> frozenset[str]:
    """The names a certificate vouches for: its CN(s) and subjectAltName DNS and IP entries."""
    names = {v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"}
    names |= {v for k, v in cert.get("subjectAltName", ()) if k in ("DNS", "IP Address")}
    return frozenset(n.casefold() for n in names)


_QUOTED_BYTES = re.compile(r"b'(?:[^'\\]|\\.)*'" + r'|b"(?:[^"\\]|\\.)*"')


def _for_log(exc: Exception) -> str:
    """An error for the log without the sender's bytes it quotes (host names, message text): those stay in
    the journal (docs/PSEUDONYMS.md)."""
    return _QUOTED_BYTES.sub("<bytes>", str(exc))


class AtnaReceiver:
    """Spools the events of each message before reading the next one (TCP backpressure is the only ack
    syslog has); a bad message is logged and journaled, a bad frame closes that connection, the receiver
    stays up. Refused senders (module doc) are logged, rate-limited, and leave no other trace."""

    def __init__(self, spool: Spool, *, purpose: str = "TREAT", default_issuer: str = "HOSP",
                 allow: list[str] | tuple[str, ...] = DEFAULT_ATNA_ALLOW):
        self.spool = spool
        self.purpose = purpose
        self.default_issuer = default_issuer
        self.allow = parse_allow(allow)
        self.rlog = RateLimitedLog(log)
        self.stats = {"messages": 0, "events": 0, "errors": 0, "ignored": 0, "refused": 0}

    # -- who is sending ------------------------------------------------------------------------------
    def plain_sender(self, ip: str, transport: str) -> Sender | None:
        """The allow-list decision for a plain TCP/UDP sender; None: refused."""
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        names: set[str] = set()
        matched = False
        for net, name in self.allow:
            if addr.version == net.version and addr in net:
                matched = True
                if name is None:
                    return Sender(transport, ip, f"atna-{transport}:{ip}", None)
                names.add(name.casefold())
        if not matched:
            return None
        return Sender(transport, ip, f"atna-{transport}:{ip}", frozenset(names))

    def refuse(self, transport: str, ip: str, why: str, kind: str) -> None:
        """Count and log (rate-limited per transport and kind of refusal, never per sender-chosen text)."""
        self.stats["refused"] += 1
        self.rlog.log(logging.WARNING, f"refused:{transport}:{kind}",
                      "ATNA %s sender in %s refused: %s", transport, net_label(ip), why)

    # -- messages -------------------------------------------------------------------------------------
    def handle_message(self, raw: bytes, sender: Sender) -> list[str] | None:
        """Parse, authorize and spool one syslog message; returns the spooled event ids, or None when the
        message was refused (its claimed source is not the sender's). Blocking: call in a thread."""
        self.stats["messages"] += 1
        transport = sender.transport
        try:
            msg = parse_syslog(raw)
            code, events, claimed = parse_audit(msg.msg, purpose=self.purpose, default_issuer=self.default_issuer)
        except (SyslogError, AuditMessageError) as exc:
            self.stats["errors"] += 1
            self.rlog.log(logging.ERROR, f"bad:{transport}", "ATNA %s message from %s: %s", transport,
                          net_label(sender.address), _for_log(exc))
            self.spool.journal({"what": "atna-bad-message", "peer": sender.address, "source": sender.identity,
                                "transport": transport, "error": str(exc)})
            return []
        if not sender.may_claim(claimed):
            whose = ("its client certificate does not name" if transport == "tls" else
                     "[dicom] atna_allow does not bind to its address")
            shown = claimed if claimed is None else claimed[:64]  # sender-chosen: bounded, repr-escaped
            self.refuse(transport, sender.address, f"the message claims AuditSourceID {shown!r}, which {whose}",
                        "spoofed-source")
            return None
        if not events:
            self.stats["ignored"] += 1
            self.spool.journal({"what": "atna-not-imaging", "peer": sender.address, "source": sender.identity,
                                "event_code": code, "app": msg.app_name, "host": msg.hostname})
            return []
        ids = self.spool.put_many(events, source=sender.identity,
                                  local={"peer": sender.address, "claimed_source": claimed,
                                         "host": msg.hostname, "app": msg.app_name})
        self.stats["events"] += len(ids)
        return ids

    async def _stream(self, stream, sender: Sender) -> None:
        import trio

        framer = Framer()
        transport = sender.transport
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                for raw in framer.feed(data):
                    if await trio.to_thread.run_sync(self.handle_message, raw, sender) is None:
                        return  # a sender that lies about its source is cut off
                if framer.error is not None:
                    self.stats["errors"] += 1
                    self.rlog.log(logging.ERROR, f"frame:{transport}", "ATNA %s from %s: %s; closing the "
                                  "connection", transport, net_label(sender.address), _for_log(framer.error))
                    self.spool.journal({"what": "atna-bad-frame", "peer": sender.address,
                                        "source": sender.identity, "transport": transport,
                                        "error": str(framer.error)})
                    return
        except (trio.BrokenResourceError, ssl.SSLError, OSError) as exc:
            # e.g. a TLS client that hangs up without close_notify: what was received is already spooled
            log.debug("ATNA %s connection ended: %s", transport, exc.__cause__ or exc or type(exc).__name__)

    async def serve_tcp(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                        task_status=None) -> None:
        import trio

        transport = "tls" if ssl_context else "tcp"

        async def handler(stream):
            try:
                ip = stream.socket.getpeername()[0]
            except OSError:
                await stream.aclose()
                return
            try:
                if ssl_context is None:
                    sender = self.plain_sender(ip, "tcp")
                    if sender is None:
                        self.refuse("tcp", ip, "address not in [dicom] atna_allow", "address")
                        return
                else:
                    stream = trio.SSLStream(stream, ssl_context, server_side=True)
                    try:
                        with trio.fail_after(HANDSHAKE_SECONDS):
                            await stream.do_handshake()
                        cert = stream.getpeercert()
                    except (trio.BrokenResourceError, trio.TooSlowError, ssl.SSLError, OSError) as exc:
                        why = exc.__cause__ or exc
                        self.refuse("tls", ip, f"no valid client certificate ({type(why).__name__}: "
                                    f"{getattr(why, 'reason', None) or why})", "certificate")
                        return
                    if not cert:  # CERT_REQUIRED makes this unreachable; assert it rather than trust it
                        self.refuse("tls", ip, "no client certificate", "certificate")
                        return
                    sender = Sender("tls", ip, f"atna-tls:{cert_subject(cert)}", cert_names(cert))
                await self._stream(stream, sender)
            except Exception as exc:  # never let one client stop the server
                self.rlog.log(logging.ERROR, f"handler:{transport}", "ATNA %s connection from %s: %s",
                              transport, net_label(ip), exc)
            finally:
                with trio.move_on_after(1) as scope:
                    scope.shield = True
                    try:
                        await stream.aclose()
                    except (trio.BrokenResourceError, OSError):
                        pass

        listeners = await trio.open_tcp_listeners(port, host=host)
        address = listeners[0].socket.getsockname()[:2]
        log.info("ATNA syslog/%s listening on %s:%d", transport, *address)
        if task_status is not None:
            task_status.started(address)
        await trio.serve_listeners(handler, listeners)

    async def serve_udp(self, host: str, port: int, *, task_status=None) -> None:
        import trio

        family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
        sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
        await sock.bind((host, port))
        address = sock.getsockname()[:2]
        log.info("ATNA syslog/udp listening on %s:%d", *address)
        if task_status is not None:
            task_status.started(address)
        with sock:
            while True:
                data, addr = await sock.recvfrom(65535)  # RFC 5426 3.2: one message per datagram
                sender = self.plain_sender(addr[0], "udp")
                if sender is None:
                    self.refuse("udp", addr[0], "address not in [dicom] atna_allow", "address")
                    continue
                try:
                    await trio.to_thread.run_sync(self.handle_message, data.rstrip(b"\n"), sender)
                except Exception as exc:
                    self.rlog.log(logging.ERROR, "handler:udp", "ATNA udp datagram from %s: %s",
                                  net_label(addr[0]), exc)


def server_ssl_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """TLS for RFC 5425 with mutual authentication (IHE ITI-19): clients must present a certificate `ca`
    signed. There is no anonymous mode: an anonymous sender could attribute any access to anyone."""
    if not ca:
        raise ValueError("ATNA over TLS needs a client CA ([dicom] atna_client_ca): clients must authenticate")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def listeners_from(settings, *, tcp: str | None = None, tls: str | None = None, udp: str | None = None,
                   cert: str | None = None, key: str | None = None, client_ca: str | None = None) -> list:
    """[(kind, host, port, ssl context or None)] from [dicom] atna_* (arguments override). Raises
    SettingsError naming what is missing. Relative paths are relative to the node home."""
    from node.dicom.settings import SettingsError, parse_hostport

    tcp, tls, udp = tcp or settings.atna_tcp, tls or settings.atna_tls, udp or settings.atna_udp
    out = []
    if tls:
        cert, key = cert or settings.atna_cert, key or settings.atna_key
        client_ca = client_ca or settings.atna_client_ca
        if not cert or not key or not client_ca:
            raise SettingsError("ATNA over TLS needs atna_cert, atna_key and atna_client_ca (mutual TLS: "
                                "senders authenticate with a certificate that CA signed)")
        home = settings.home
        try:
            ctx = server_ssl_context(str(home / cert), str(home / key), str(home / client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise SettingsError(f"ATNA TLS certificate, key or client CA unusable: {exc}") from exc
        out.append(("tls", *parse_hostport(tls, "atna_tls"), ctx))
    if tcp:
        out.append(("tcp", *parse_hostport(tcp, "atna_tcp"), None))
    if udp:
        out.append(("udp", *parse_hostport(udp, "atna_udp"), None))
    return out


async def serve_all(receiver: AtnaReceiver, listeners: list, nursery) -> dict:
    """Start every listener in `nursery`; returns {kind: (host, port)}."""
    started = {}
    for kind, host, port, ctx in listeners:
        if kind == "udp":
            started[kind] = await nursery.start(
                lambda task_status, h=host, p=port: receiver.serve_udp(h, p, task_status=task_status))
        else:
            started[kind] = await nursery.start(
                lambda task_status, h=host, p=port, c=ctx: receiver.serve_tcp(h, p, ssl_context=c,
                                                                               task_status=task_status))
    return started
