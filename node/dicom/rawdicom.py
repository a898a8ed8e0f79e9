"""A small DICOM data-set walker over raw bytes (standard library only).

It finds top-level elements without decoding the data set, which keeps the relay fast, lets the Orthanc
plugin run without pydicom, and above all makes every path (proxy, plugin, import, verify-image) hash the
same bytes:

* `digest`       = SHA-256 of the data set's canonical element stream: for every element in order, its tag
                   and its value bytes, with sequences hashed item by item (recursively). It leaves out
                   what differs between equivalent encodings: File Meta Information (group 0002), group
                   lengths (gggg,0000), trailing padding (FFFC,FFFC), VRs, and defined vs undefined
                   lengths. So a file and the same instance after implicit<->explicit VR little-endian
                   conversion by storescu or a PACS have one digest, while any change of a value changes it.
                   (Big-endian and compressed transfer syntaxes change value bytes, hence the digest.)
* `pixel_digest` = SHA-256 of the value of the top-level Pixel Data (7FE0,0010) element as encoded: native
                   pixels, or for encapsulated transfer syntaxes every item up to (not including) the sequence
                   delimiter. It survives metadata edits and implicit<->explicit little-endian re-encoding.

Limits (every input is hostile: a modality, a viewer or a file on disk may send anything):

* `MAX_INFLATED` = 64 MiB: a deflated data set (1.2.840.10008.1.2.1.99) is inflated incrementally and refused
  with DicomLimitError once its output passes 64 MiB (deflate reaches ~1000:1, so 64 KiB could otherwise
  become 64 MiB and 200 KiB 200 MiB). Deflate is used for small structured objects (SR, presentation
  states); images use their own pixel compression, so real data sets stay far below the cap.
* `MAX_NESTING` = 64: sequences nested deeper than 64 levels are refused with DicomLimitError before the
  walkers recurse (real objects nest fewer than 10 deep; Python's stack would end near 500).
* `walk_dataset(..., deadline=)`: a time.monotonic() deadline; the walk stops with DicomLimitError past it.

Refs: PS3.5 7.1 (data elements), 7.5 (nested data sets, undefined lengths), 6.2.2 (UN with undefined length
is implicit VR LE), A.4 (encapsulation), PS3.10 7.1 (file meta information).
"""

from __future__ import annotations

import hashlib
import struct
import time
import zlib
from dataclasses import dataclass, field

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"

PIXEL_DATA = 0x7FE00010
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
# PS3.5 7.1.2: these VRs have 2 reserved bytes and a 32-bit length in explicit VR.
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}

# Tags the hook reads (keyword -> tag).
TAGS = {
    "SOPClassUID": 0x00080016, "SOPInstanceUID": 0x00080018, "AccessionNumber": 0x00080050,
    "QueryRetrieveLevel": 0x00080052, "Modality": 0x00080060, "PatientName": 0x00100010,
    "PatientID": 0x00100020, "IssuerOfPatientID": 0x00100021, "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "StudyDate": 0x00080020, "BodyPartExamined": 0x00180015,  # categories for prior imaging (node.vocabulary)
}


MAX_INFLATED = 64 << 20   # bytes a deflated data set may inflate to (module doc)
MAX_NESTING = 64          # sequence levels (module doc)


class DicomFormatError(ValueError):
    """The bytes are not a well-formed DICOM data set (truncated, bad lengths, not DICOM at all)."""


class DicomLimitError(DicomFormatError):
    """The data set passes a safety limit (inflated size, nesting depth, time budget)."""


def _too_deep(depth: int) -> None:
    if depth > MAX_NESTING:
        raise DicomLimitError(f"sequences nested deeper than {MAX_NESTING} levels")


def inflate(data: bytes | memoryview, cap: int = MAX_INFLATED) -> bytes:
    """Raw deflate (PS3.5 A.5) with an output cap: never allocates more than `cap` + 1 bytes of output."""
    d = zlib.decompressobj(-15)
    try:
        out = d.decompress(bytes(data), cap + 1)
    except zlib.error as exc:
        raise DicomFormatError(f"deflated data set does not inflate: {exc}") from exc
    if len(out) > cap or d.unconsumed_tail:
        raise DicomLimitError(f"deflated data set inflates past the {cap >> 20} MiB cap")
    return out


def _header(data, pos: int, n: int, implicit: bool, little: bool):
    """(group, elem, vr or None, length, value position) of the element at pos."""
    u16, u32 = ("<H", "<I") if little else (">H", ">I")
    if pos + 8 > n:
        raise DicomFormatError(f"truncated element header at byte {pos}")
    group, elem = struct.unpack_from(u16 + u16[1], data, pos)
    if (implicit and group != 0x0002) or group == 0xFFFE:
        return group, elem, None, struct.unpack_from(u32, data, pos + 4)[0], pos + 8
    vr = bytes(data[pos + 4:pos + 6])
    if not (vr.isalpha() and vr.isupper()):
        raise DicomFormatError(f"bad VR {vr!r} for tag ({group:04X},{elem:04X}) at byte {pos}")
    if vr in _LONG_VRS:
        if pos + 12 > n:
            raise DicomFormatError(f"truncated element header at byte {pos}")
        return group, elem, vr, struct.unpack_from(u32, data, pos + 8)[0], pos + 12
    return group, elem, vr, struct.unpack_from(u16, data, pos + 6)[0], pos + 8


_EMPTY = struct.pack("<I", 0)


def _canon(data, pos: int, end: int, implicit: bool, little: bool, h, until_item_end: bool = False,
           depth: int = 0) -> int:
    """Feed the canonical element stream of a data set (see module doc) to hasher h; returns the end."""
    while pos < end:
        group, elem, vr, length, vpos = _header(data, pos, end, implicit, little)
        tag = (group << 16) | elem
        if tag == ITEM_END and until_item_end:
            return vpos
        if group == 0xFFFE:
            raise DicomFormatError(f"unexpected item or delimiter at byte {pos}")
        skip = group == 0x0002 or elem == 0x0000 or tag == 0xFFFCFFFC
        if length == UNDEFINED:
            if tag == PIXEL_DATA:
                pos = _skip_fragments(data, vpos, end, little)
                if not skip:
                    h.update(struct.pack("<HHI", group, elem, pos - 8 - vpos))
                    h.update(data[vpos:pos - 8])
                continue
            sub = hashlib.sha256()
            pos, items = _canon_items(data, vpos, end, implicit or vr == b"UN", little, sub, True, depth + 1)
            if not skip:
                h.update(struct.pack("<HH", group, elem))
                h.update(b"SQ" + sub.digest() if items else _EMPTY)
            continue
        if vpos + length > end:
            raise DicomFormatError(f"element ({group:04X},{elem:04X}) length {length} runs past the end")
        pos = vpos + length
        if skip:
            continue
        h.update(struct.pack("<HH", group, elem))
        if length and (vr == b"SQ" or (vr is None and length >= 8 and
                                       bytes(data[vpos:vpos + 4]) == (b"\xfe\xff\x00\xe0" if little else
                                                                     b"\xff\xfe\xe0\x00"))):
            # a sequence; in implicit VR recognised by its first item tag (no dictionary needed)
            sub = hashlib.sha256()
            try:
                _canon_items(data, vpos, pos, implicit, little, sub, False, depth + 1)
            except DicomFormatError as exc:
                if vr == b"SQ" or isinstance(exc, DicomLimitError):
                    raise
                sub = None
            if sub is not None:
                h.update(b"SQ" + sub.digest())
                continue
        h.update(struct.pack("<I", length))
        h.update(data[vpos:pos])
    if until_item_end:
        raise DicomFormatError("item without delimiter")
    return pos


def _canon_items(data, pos: int, end: int, implicit: bool, little: bool, h, undefined: bool,
                 depth: int) -> tuple[int, int]:
    _too_deep(depth)
    u32 = "<I" if little else ">I"
    items = 0
    while pos < end or undefined:
        if pos + 8 > end:
            raise DicomFormatError("truncated sequence")
        group, elem = struct.unpack_from("<HH" if little else ">HH", data, pos)
        tag = (group << 16) | elem
        length = struct.unpack_from(u32, data, pos + 4)[0]
        pos += 8
        if tag == SEQ_END and undefined:
            return pos, items
        if tag != ITEM:
            raise DicomFormatError(f"expected an item in a sequence at byte {pos - 8}")
        items += 1
        h.update(b"IT")
        if length == UNDEFINED:
            pos = _canon(data, pos, end, implicit, little, h, until_item_end=True, depth=depth)
        else:
            if pos + length > end:
                raise DicomFormatError("sequence item runs past the end")
            _canon(data, pos, pos + length, implicit, little, h, depth=depth)
            pos += length
        h.update(b"IE")
    return pos, items


def canonical_digest(data: bytes | memoryview, transfer_syntax: str) -> str:
    implicit = transfer_syntax == IMPLICIT_LE
    little = transfer_syntax != EXPLICIT_BE
    if transfer_syntax == DEFLATED_LE:
        data = inflate(data)
    h = hashlib.sha256()
    mv = memoryview(data)
    try:
        _canon(mv, 0, len(mv), implicit, little, h)
    except DicomFormatError as exc:
        if implicit or not little or "bad VR" not in str(exc) or "at byte 0" not in str(exc):
            raise
        h = hashlib.sha256()
        _canon(mv, 0, len(mv), True, True, h)
    return h.hexdigest()


@dataclass
class Walk:
    values: dict[int, bytes] = field(default_factory=dict)   # wanted tag -> raw value bytes
    pixel_digest: str | None = None
    end: int = 0


def _walk(data: bytes | memoryview, pos: int, end: int, implicit: bool, little: bool, wanted: set[int] | None,
          out: Walk | None, stop_at_item_end: bool = False, depth: int = 0, deadline: float | None = None) -> int:
    """Walk elements from pos; records wanted tags/pixel data when `out` is given (top level only).
    Returns the position after the last element (after an item delimiter when stop_at_item_end)."""
    u16, u32 = ("<H", "<I") if little else (">H", ">I")
    n = end
    while pos < n:
        if pos + 8 > n:
            raise DicomFormatError(f"truncated element header at byte {pos}")
        if deadline is not None and time.monotonic() > deadline:
            raise DicomLimitError(f"data set walk exceeded its time budget at byte {pos}")
        group, elem = struct.unpack_from(u16 + u16[1], data, pos)
        tag = (group << 16) | elem
        if tag in (ITEM_END, SEQ_END, ITEM):
            # Delimiters and items have no VR (PS3.5 7.5); items are always little endian in LE syntaxes.
            length = struct.unpack_from(u32, data, pos + 4)[0]
            pos += 8
            if tag == ITEM_END and stop_at_item_end:
                return pos
            if tag == SEQ_END:
                raise DicomFormatError(f"unexpected sequence delimiter at byte {pos - 8}")
            raise DicomFormatError(f"unexpected item tag at byte {pos - 8}")
        group_is_meta = group == 0x0002
        if implicit and not group_is_meta:
            vr = None
            length = struct.unpack_from(u32, data, pos + 4)[0]
            pos += 8
        else:
            vr = bytes(data[pos + 4:pos + 6])
            if not (vr.isalpha() and vr.isupper()):
                raise DicomFormatError(f"bad VR {vr!r} for tag ({group:04X},{elem:04X}) at byte {pos}")
            if vr in _LONG_VRS:
                if pos + 12 > n:
                    raise DicomFormatError(f"truncated element header at byte {pos}")
                length = struct.unpack_from(u32, data, pos + 8)[0]
                pos += 12
            else:
                length = struct.unpack_from(u16, data, pos + 6)[0]
                pos += 8
        if length == UNDEFINED:
            start = pos
            if tag == PIXEL_DATA:
                pos = _skip_fragments(data, pos, n, little)
                if out is not None:
                    out.pixel_digest = hashlib.sha256(data[start:pos - 8]).hexdigest()
            else:
                # SQ, or UN with undefined length, whose content is implicit VR little endian (PS3.5 6.2.2).
                nested_implicit = implicit or vr == b"UN"
                pos = _skip_sequence(data, pos, n, nested_implicit, little and not (vr == b"UN"), depth + 1,
                                     deadline)
            continue
        if pos + length > n:
            raise DicomFormatError(f"element ({group:04X},{elem:04X}) length {length} runs past the end")
        if out is not None:
            if tag == PIXEL_DATA:
                out.pixel_digest = hashlib.sha256(data[pos:pos + length]).hexdigest()
            elif wanted is not None and tag in wanted:
                out.values[tag] = bytes(data[pos:pos + length])
        pos += length
    if stop_at_item_end:
        raise DicomFormatError("item without delimiter")
    return pos


def _skip_sequence(data, pos: int, n: int, implicit: bool, little: bool, depth: int,
                   deadline: float | None) -> int:
    _too_deep(depth)
    u32 = "<I" if little else ">I"
    while True:
        if pos + 8 > n:
            raise DicomFormatError("truncated sequence")
        group, elem = struct.unpack_from("<HH" if little else ">HH", data, pos)
        tag = (group << 16) | elem
        length = struct.unpack_from(u32, data, pos + 4)[0]
        pos += 8
        if tag == SEQ_END:
            return pos
        if tag != ITEM:
            raise DicomFormatError(f"expected an item in a sequence at byte {pos - 8}")
        if length == UNDEFINED:
            pos = _walk(data, pos, n, implicit, little, None, None, stop_at_item_end=True, depth=depth,
                        deadline=deadline)
        else:
            if pos + length > n:
                raise DicomFormatError("sequence item runs past the end")
            pos += length


def _skip_fragments(data, pos: int, n: int, little: bool) -> int:
    u32 = "<I" if little else ">I"
    while True:
        if pos + 8 > n:
            raise DicomFormatError("truncated encapsulated pixel data")
        group, elem = struct.unpack_from("<HH" if little else ">HH", data, pos)
        tag = (group << 16) | elem
        length = struct.unpack_from(u32, data, pos + 4)[0]
        pos += 8
        if tag == SEQ_END:
            return pos
        if tag != ITEM or length == UNDEFINED or pos + length > n:
            raise DicomFormatError("malformed encapsulated pixel data fragment")
        pos += length


def walk_dataset(data: bytes | memoryview, transfer_syntax: str, wanted: set[int] | None = None, *,
                 deadline: float | None = None) -> Walk:
    """Top-level values of the `wanted` tags and the pixel digest. `deadline`: time.monotonic() limit."""
    implicit = transfer_syntax == IMPLICIT_LE
    little = transfer_syntax != EXPLICIT_BE
    if transfer_syntax == DEFLATED_LE:
        data = inflate(data)
    out = Walk()
    try:
        out.end = _walk(memoryview(data), 0, len(data), implicit, little, wanted, out, deadline=deadline)
    except DicomFormatError as exc:
        # Some writers label an implicit VR data set as explicit; retry like pydicom does.
        if implicit or not little or "bad VR" not in str(exc) or "at byte 0" not in str(exc):
            raise
        out = Walk()
        out.end = _walk(memoryview(data), 0, len(data), True, True, wanted, out, deadline=deadline)
    return out


def text(raw: bytes | None) -> str | None:
    """A string value (UI, LO, AE, CS, PN ...) without padding; None when absent or empty."""
    if raw is None:
        return None
    s = raw.decode("latin-1").rstrip("\x00 ").lstrip(" ")
    return s or None


def integer(raw: bytes | None) -> int | None:
    """US or UL, little endian (command sets are always implicit VR little endian)."""
    if not raw:
        return None
    return int.from_bytes(raw[:4] if len(raw) >= 4 else raw[:2], "little")


@dataclass
class InstanceInfo:
    transfer_syntax: str
    fields: dict[str, str]
    digest: str
    pixel_digest: str | None

    def get(self, key: str) -> str | None:
        return self.fields.get(key)


_U32 = struct.Struct("<I")
_TAG_LEN = struct.Struct("<HHI")
_TAG_VR_LEN = struct.Struct("<HH2sH")
_WANTED = frozenset(TAGS.values())
_LONG_VRS_STR = frozenset(_LONG_VRS)


def _fast_scan(mv: memoryview, pos: int, end: int, implicit: bool, pieces: list, values: dict | None,
               until_item_end: bool = False, depth: int = 0):
    """Little-endian single pass: canonical pieces (the same stream `_canon` hashes), wanted top-level
    values and the pixel digest. Returns (end position, pixel digest or None)."""
    pixel = None
    unpack_tl, unpack_tvl, unpack_u32 = _TAG_LEN.unpack_from, _TAG_VR_LEN.unpack_from, _U32.unpack_from
    while pos < end:
        if pos + 8 > end:
            raise DicomFormatError(f"truncated element header at byte {pos}")
        group, elem, length = unpack_tl(mv, pos)
        if group == 0xFFFE:
            if elem == 0xE00D and until_item_end:
                return pos + 8, pixel
            raise DicomFormatError(f"unexpected item or delimiter at byte {pos}")
        vr = None
        if implicit and group != 0x0002:
            vpos = pos + 8
        else:
            _, _, vr, short = unpack_tvl(mv, pos)
            if vr in _LONG_VRS_STR:
                if pos + 12 > end:
                    raise DicomFormatError(f"truncated element header at byte {pos}")
                length = unpack_u32(mv, pos + 8)[0]
                vpos = pos + 12
            elif vr.isalpha() and vr.isupper():
                length = short
                vpos = pos + 8
            else:
                raise DicomFormatError(f"bad VR {vr!r} for tag ({group:04X},{elem:04X}) at byte {pos}")
        skip = group == 0x0002 or elem == 0x0000 or (group == 0xFFFC and elem == 0xFFFC)
        tag_bytes = mv[pos:pos + 4]
        if length == UNDEFINED:
            if group == 0x7FE0 and elem == 0x0010:
                pos = _skip_fragments(mv, vpos, end, True)
                if values is not None:
                    pixel = hashlib.sha256(mv[vpos:pos - 8]).hexdigest()
                if not skip:
                    pieces += (tag_bytes, _U32.pack(pos - 8 - vpos), mv[vpos:pos - 8])
                continue
            sub: list = []
            pos, items = _fast_items(mv, vpos, end, implicit or vr == b"UN", sub, True, depth + 1)
            if not skip:
                pieces += (tag_bytes, b"SQ" + hashlib.sha256(b"".join(sub)).digest() if items else _EMPTY)
            continue
        pos = vpos + length
        if pos > end:
            raise DicomFormatError(f"element ({group:04X},{elem:04X}) length {length} runs past the end")
        value = mv[vpos:pos]
        if values is not None:
            tag = (group << 16) | elem
            if tag in _WANTED:
                values[tag] = bytes(value)
            elif tag == PIXEL_DATA:
                pixel = hashlib.sha256(value).hexdigest()
        if skip:
            continue
        if length and (vr == b"SQ" or (vr is None and length >= 8 and value[:4] == b"\xfe\xff\x00\xe0")):
            sub = []
            try:
                _fast_items(mv, vpos, pos, implicit, sub, False, depth + 1)
            except DicomFormatError as exc:
                if vr == b"SQ" or isinstance(exc, DicomLimitError):
                    raise
                sub = None
            if sub is not None:
                pieces += (tag_bytes, b"SQ" + hashlib.sha256(b"".join(sub)).digest())
                continue
        pieces += (tag_bytes, _U32.pack(length), value)
    if until_item_end:
        raise DicomFormatError("item without delimiter")
    return pos, pixel


def _fast_items(mv, pos: int, end: int, implicit: bool, pieces: list, undefined: bool,
                depth: int) -> tuple[int, int]:
    _too_deep(depth)
    items = 0
    while pos < end or undefined:
        if pos + 8 > end:
            raise DicomFormatError("truncated sequence")
        group, elem, length = _TAG_LEN.unpack_from(mv, pos)
        pos += 8
        if group == 0xFFFE and elem == 0xE0DD and undefined:
            return pos, items
        if group != 0xFFFE or elem != 0xE000:
            raise DicomFormatError(f"expected an item in a sequence at byte {pos - 8}")
        items += 1
        pieces.append(b"IT")
        if length == UNDEFINED:
            pos, _ = _fast_scan(mv, pos, end, implicit, pieces, None, until_item_end=True, depth=depth)
        else:
            if pos + length > end:
                raise DicomFormatError("sequence item runs past the end")
            _fast_scan(mv, pos, pos + length, implicit, pieces, None, depth=depth)
            pos += length
        pieces.append(b"IE")
    return pos, items


def inspect_dataset(data: bytes | memoryview, transfer_syntax: str) -> InstanceInfo:
    """UIDs, patient fields and both digests of an encoded data set (as carried by a C-STORE)."""
    if transfer_syntax == EXPLICIT_BE:  # retired; the general (slower) walkers handle it
        w = walk_dataset(data, transfer_syntax, set(TAGS.values()))
        values, pixel, digest = w.values, w.pixel_digest, canonical_digest(data, transfer_syntax)
    else:
        if transfer_syntax == DEFLATED_LE:
            data = inflate(data)
        mv = memoryview(data)
        implicit = transfer_syntax == IMPLICIT_LE
        values, pieces = {}, []
        try:
            _, pixel = _fast_scan(mv, 0, len(mv), implicit, pieces, values)
        except DicomFormatError as exc:
            if implicit or "bad VR" not in str(exc) or "at byte 0" not in str(exc):
                raise
            values, pieces = {}, []
            _, pixel = _fast_scan(mv, 0, len(mv), True, pieces, values)
        digest = hashlib.sha256(b"".join(pieces)).hexdigest()
    fields = {}
    for key, tag in TAGS.items():
        v = text(values.get(tag))
        if v is not None:
            fields[key] = v
    return InstanceInfo(transfer_syntax, fields, digest, pixel)


def split_file(blob: bytes) -> tuple[str, int]:
    """(transfer syntax, offset of the data set) of a DICOM file (PS3.10), preamble and meta optional."""
    pos = 132 if len(blob) >= 132 and blob[128:132] == b"DICM" else 0
    ts = None
    start = pos
    while pos + 8 <= len(blob):
        group = struct.unpack_from("<H", blob, pos)[0]
        if group != 0x0002:
            break
        elem = struct.unpack_from("<H", blob, pos + 2)[0]
        vr = blob[pos + 4:pos + 6]
        if vr.isalpha() and vr.isupper():
            if vr in _LONG_VRS:
                if pos + 12 > len(blob):
                    raise DicomFormatError(f"truncated file meta element header at byte {pos}")
                length = struct.unpack_from("<I", blob, pos + 8)[0]
                pos += 12
            else:
                length = struct.unpack_from("<H", blob, pos + 6)[0]
                pos += 8
        else:  # some writers put an implicit VR meta group; tolerate it
            length = struct.unpack_from("<I", blob, pos + 4)[0]
            pos += 8
        if length == UNDEFINED or pos + length > len(blob):
            raise DicomFormatError("malformed file meta information")
        if elem == 0x0010:
            ts = text(blob[pos:pos + length])
        pos += length
    if start == 132 and pos == 132 and ts is None:
        raise DicomFormatError("DICM file without file meta information")
    if ts is None:
        if len(blob) < pos + 8:
            raise DicomFormatError("too short to be DICOM")
        # No meta: guess explicit VR LE when a plausible VR follows the first tag, else implicit.
        vr = blob[pos + 4:pos + 6]
        ts = EXPLICIT_LE if (vr.isalpha() and vr.isupper()) else IMPLICIT_LE
    return ts, pos


def inspect_file(blob: bytes) -> InstanceInfo:
    ts, offset = split_file(blob)
    if offset >= len(blob):
        raise DicomFormatError("file has no data set after its meta information")
    return inspect_dataset(memoryview(blob)[offset:], ts)
