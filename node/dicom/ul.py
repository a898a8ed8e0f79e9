"""DICOM Upper Layer (PS3.8) as a sans-I/O parser: bytes in, PDUs and DIMSE messages out.

The proxy relays bytes between a modality/viewer and the PACS and feeds copies to one `PduReader` per
direction, so nothing is re-encoded: the PACS receives exactly what the modality sent, and digests are
taken over exactly those bytes. Everything here is pure and unit-tested without sockets.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from node.dicom.rawdicom import IMPLICIT_LE, DicomFormatError, DicomLimitError, integer, text, walk_dataset

# PS3.8 9.3: PDU types
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07
PDU_NAMES = {1: "A-ASSOCIATE-RQ", 2: "A-ASSOCIATE-AC", 3: "A-ASSOCIATE-RJ", 4: "P-DATA-TF",
             5: "A-RELEASE-RQ", 6: "A-RELEASE-RP", 7: "A-ABORT"}

# A PDU larger than this is refused instead of buffered. Real peers negotiate 16 KiB-1 MiB PDUs
# (dcmtk and Orthanc default to 16 KiB); 64 MiB leaves room for odd ones and caps memory per association.
MAX_PDU = 64 << 20
# A DIMSE command set is a few hundred bytes (PS3.7 E.1); a query/retrieve identifier a few KiB. Bigger
# ones are refused before they are buffered or parsed (parse_command runs on the proxy's event loop).
MAX_COMMAND = 64 << 10
MAX_IDENTIFIER = 4 << 20


class ProtocolError(ValueError):
    """The byte stream is not valid DICOM Upper Layer protocol."""


class PduReader:
    """Splits a byte stream into whole PDUs: feed(bytes) -> [(type, pdu_bytes)]."""

    def __init__(self, max_pdu: int = MAX_PDU):
        self._buf = bytearray()
        self.max_pdu = max_pdu

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        out = []
        while len(self._buf) >= 6:
            pdu_type = self._buf[0]
            if pdu_type not in PDU_NAMES:
                raise ProtocolError(f"unknown PDU type 0x{pdu_type:02x}")
            length = struct.unpack_from(">I", self._buf, 2)[0]
            if length > self.max_pdu:
                raise ProtocolError(f"{PDU_NAMES[pdu_type]} of {length} bytes exceeds the {self.max_pdu} limit")
            if len(self._buf) < 6 + length:
                break
            out.append((pdu_type, bytes(self._buf[:6 + length])))
            del self._buf[:6 + length]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)


def _items(body: bytes, start: int):
    pos = start
    while pos + 4 <= len(body):
        item_type = body[pos]
        length = struct.unpack_from(">H", body, pos + 2)[0]
        if pos + 4 + length > len(body):
            raise ProtocolError(f"item 0x{item_type:02x} runs past the end of the PDU")
        yield item_type, body[pos + 4:pos + 4 + length]
        pos += 4 + length


def _uid(raw: bytes) -> str:
    return raw.decode("ascii", "replace").rstrip("\x00 ")


@dataclass
class AssociateRequest:
    called_ae: str
    calling_ae: str
    contexts: dict[int, tuple[str, list[str]]]  # id -> (abstract syntax, proposed transfer syntaxes)


@dataclass
class AssociateAccept:
    contexts: dict[int, tuple[int, str | None]]  # id -> (result, accepted transfer syntax)


def parse_associate_rq(pdu: bytes) -> AssociateRequest:
    if len(pdu) < 74:
        raise ProtocolError("A-ASSOCIATE-RQ shorter than its fixed fields")
    called = pdu[10:26].decode("ascii", "replace").strip()
    calling = pdu[26:42].decode("ascii", "replace").strip()
    contexts = {}
    for item_type, value in _items(pdu, 74):
        if item_type == 0x20 and len(value) >= 4:
            ctx_id = value[0]
            abstract, tss = "", []
            for sub_type, sub in _items(value, 4):
                if sub_type == 0x30:
                    abstract = _uid(sub)
                elif sub_type == 0x40:
                    tss.append(_uid(sub))
            contexts[ctx_id] = (abstract, tss)
    return AssociateRequest(called, calling, contexts)


def parse_associate_ac(pdu: bytes) -> AssociateAccept:
    if len(pdu) < 74:
        raise ProtocolError("A-ASSOCIATE-AC shorter than its fixed fields")
    contexts = {}
    for item_type, value in _items(pdu, 74):
        if item_type == 0x21 and len(value) >= 4:
            ts = None
            for sub_type, sub in _items(value, 4):
                if sub_type == 0x40:
                    ts = _uid(sub)
            contexts[value[0]] = (value[2], ts)
    return AssociateAccept(contexts)


def with_called_ae(pdu: bytes, called_ae: str) -> bytes:
    """The A-ASSOCIATE-RQ addressed to another called AE title (16 bytes, space padded, PS3.8 9.3.2)."""
    return pdu[:10] + called_ae.encode("ascii").ljust(16)[:16] + pdu[26:]


def associate_rj(result: int = 1, source: int = 1, reason: int = 3) -> bytes:
    """A-ASSOCIATE-RJ (PS3.8 9.3.4). Defaults: rejected-permanent, service-user, calling AE not recognized."""
    return bytes([A_ASSOCIATE_RJ, 0]) + struct.pack(">I", 4) + bytes([0, result, source, reason])


def abort(source: int = 2, reason: int = 0) -> bytes:
    """A-ABORT (PS3.8 9.3.8). source 2 = service-provider (the proxy), reason 0 = not specified."""
    return bytes([A_ABORT, 0]) + struct.pack(">I", 4) + bytes([0, 0, source, reason])


def iter_pdvs(pdu: bytes):
    """(context id, is_command, is_last, fragment) for each PDV of a P-DATA-TF (PS3.8 9.3.5, E.2)."""
    pos = 6
    end = len(pdu)
    while pos < end:
        if pos + 6 > end:
            raise ProtocolError("truncated PDV item")
        length = struct.unpack_from(">I", pdu, pos)[0]
        if length < 2 or pos + 4 + length > end:
            raise ProtocolError(f"PDV item length {length} is invalid")
        ctx_id, header = pdu[pos + 4], pdu[pos + 5]
        yield ctx_id, bool(header & 1), bool(header & 2), memoryview(pdu)[pos + 6:pos + 4 + length]
        pos += 4 + length


# -- DIMSE ------------------------------------------------------------------------------------------------
# PS3.7 E.1: command field values
C_STORE_RQ, C_GET_RQ, C_FIND_RQ, C_MOVE_RQ, C_ECHO_RQ, C_CANCEL_RQ = 0x0001, 0x0010, 0x0020, 0x0021, 0x0030, 0x0FFF
RESPONSE_BIT = 0x8000
COMMAND_NAMES = {0x0001: "C-STORE", 0x0010: "C-GET", 0x0020: "C-FIND", 0x0021: "C-MOVE", 0x0030: "C-ECHO",
                 0x0FFF: "C-CANCEL", 0x0100: "N-EVENT-REPORT", 0x0110: "N-GET", 0x0120: "N-SET",
                 0x0130: "N-ACTION", 0x0140: "N-CREATE", 0x0150: "N-DELETE"}
NO_DATASET = 0x0101
_QUERY_FIELDS = {C_FIND_RQ, C_GET_RQ, C_MOVE_RQ}

_COMMAND_TAGS = {
    "AffectedSOPClassUID": 0x00000002, "CommandField": 0x00000100, "MessageID": 0x00000110,
    "MessageIDBeingRespondedTo": 0x00000120, "MoveDestination": 0x00000600, "Priority": 0x00000700,
    "CommandDataSetType": 0x00000800, "Status": 0x00000900, "AffectedSOPInstanceUID": 0x00001000,
    "NumberOfRemainingSuboperations": 0x00001020, "NumberOfCompletedSuboperations": 0x00001021,
    "NumberOfFailedSuboperations": 0x00001022, "NumberOfWarningSuboperations": 0x00001023,
    "MoveOriginatorApplicationEntityTitle": 0x00001030, "MoveOriginatorMessageID": 0x00001031,
}
_INT_FIELDS = {"CommandField", "MessageID", "MessageIDBeingRespondedTo", "Priority", "CommandDataSetType",
               "Status", "NumberOfRemainingSuboperations", "NumberOfCompletedSuboperations",
               "NumberOfFailedSuboperations", "NumberOfWarningSuboperations", "MoveOriginatorMessageID"}


def parse_command(raw: bytes) -> dict:
    """A DIMSE command set (always implicit VR little endian, PS3.7 6.3.1) -> {keyword: value}."""
    if len(raw) > MAX_COMMAND:
        raise DicomLimitError(f"DIMSE command set of {len(raw)} bytes exceeds the {MAX_COMMAND} limit")
    w = walk_dataset(raw, IMPLICIT_LE, set(_COMMAND_TAGS.values()))
    out = {}
    for key, tag in _COMMAND_TAGS.items():
        if tag in w.values:
            out[key] = integer(w.values[tag]) if key in _INT_FIELDS else text(w.values[tag])
    if "CommandField" not in out:
        raise ProtocolError("DIMSE command set without CommandField")
    return out


@dataclass
class Message:
    context_id: int
    command: dict
    dataset: list[memoryview] = field(default_factory=list)  # fragments; join only when needed

    @property
    def field(self) -> int:
        return self.command["CommandField"]

    @property
    def is_response(self) -> bool:
        return bool(self.field & RESPONSE_BIT)

    @property
    def name(self) -> str:
        base = COMMAND_NAMES.get(self.field & ~RESPONSE_BIT, f"0x{self.field:04x}")
        return base + ("-RSP" if self.is_response else "-RQ")

    def dataset_bytes(self) -> bytes:
        return b"".join(self.dataset)


class MessageAssembler:
    """Reassembles DIMSE messages from P-DATA-TF PDUs of one direction (PS3.8 9.3.5.1, PS3.7 9.3)."""

    def __init__(self):
        self._command = bytearray()
        self._current: Message | None = None
        self._size = 0

    def feed(self, pdu: bytes) -> list[Message]:
        done = []
        for ctx_id, is_command, is_last, fragment in iter_pdvs(pdu):
            if is_command:
                if self._current is not None:
                    raise ProtocolError("command fragment while a data set was expected")
                self._command += fragment
                if len(self._command) > MAX_COMMAND:
                    raise ProtocolError(f"DIMSE command set exceeds the {MAX_COMMAND} byte limit")
                if is_last:
                    try:
                        command = parse_command(bytes(self._command))
                    except DicomFormatError as exc:
                        raise ProtocolError(f"malformed DIMSE command set: {exc}") from exc
                    self._command.clear()
                    msg = Message(ctx_id, command)
                    self._size = 0
                    if command.get("CommandDataSetType", NO_DATASET) == NO_DATASET:
                        done.append(msg)
                    else:
                        self._current = msg
            else:
                if self._current is None:
                    raise ProtocolError("data set fragment without a preceding command")
                self._current.dataset.append(fragment)  # a view into an immutable PDU: no copy
                self._size += len(fragment)
                if self._size > MAX_IDENTIFIER and self._current.field & ~RESPONSE_BIT in _QUERY_FIELDS:
                    raise ProtocolError(f"{self._current.name} identifier exceeds the {MAX_IDENTIFIER} byte limit")
                if is_last:
                    done.append(self._current)
                    self._current = None
        return done
