"""Mutation fuzzing of the three parsers that take bytes from strangers (issue 10): the DICOM data-set walker,
the DICOM Upper Layer parser (PDUs, A-ASSOCIATE, DIMSE command sets, the proxy's auditor), and the syslog /
ATNA parser. Each input may only end in the module's own error type, within a bounded time.

Seeds are valid inputs; each iteration applies 1-4 random mutations (byte flips, boundary length values,
truncation, duplication and deletion of spans, splicing two seeds). Deterministic (seeded `random.Random`), so
a failure names its iteration and is reproducible. `make test` runs FUZZ_QUICK inputs per parser;
`make soak` runs FUZZ_SOAK (100,000) per parser.
"""

from __future__ import annotations

import random
import struct
import time
import zlib

import pytest
from dicom_helpers import audit_xml, frame, ident_elements, nested_sequences, sample_file, syslog

from node.dicom import atna, rawdicom, ul
from node.dicom.auditor import AssociationAuditor

FUZZ_QUICK = 2_000
FUZZ_SOAK = 100_000
MAX_SECONDS_PER_INPUT = 2.0
_BOUNDARY = [b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\xfe\xff\xff\x7f", b"\xff\xff", b"\x00\x80",
             b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0", b"\xfe\xff\x0d\xe0", b"SQ", b"UN", b"OB", b"\x00"]


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        n = len(data)
        if n == 0:
            data += rng.randbytes(rng.randint(1, 64))
            continue
        i = rng.randrange(n)
        if op == 0:                                   # flip bits in a few bytes
            for _ in range(rng.randint(1, 8)):
                j = rng.randrange(n)
                data[j] ^= 1 << rng.randrange(8)
        elif op == 1:                                 # a boundary value over the bytes at i
            b = rng.choice(_BOUNDARY)
            data[i:i + len(b)] = b
        elif op == 2:                                 # truncate
            del data[i:]
        elif op == 3:                                 # duplicate a span
            j = min(n, i + rng.randint(1, 256))
            data[i:i] = data[i:j] * rng.randint(1, 8)
        elif op == 4:                                 # delete a span
            del data[i:i + rng.randint(1, 64)]
        elif op == 5:                                 # random bytes
            data[i:i + rng.randint(1, 16)] = rng.randbytes(rng.randint(1, 16))
        else:                                         # splice another seed in
            other = rng.choice(seeds)
            k = rng.randrange(len(other) + 1)
            data[i:] = other[k:]
    return bytes(data)


def run_fuzz(name: str, target, seeds: list[bytes], allowed: tuple, n: int, seed: int = 10) -> dict:
    rng = random.Random(f"{name}-{seed}")
    slowest, outcomes = 0.0, {"ok": 0, "refused": 0}
    for it in range(n):
        data = mutate(rng, seeds)
        t0 = time.perf_counter()
        try:
            target(data)
            outcomes["ok"] += 1
        except allowed:
            outcomes["refused"] += 1
        except Exception as exc:  # the finding: name the input so it can be replayed
            raise AssertionError(f"{name} iteration {it}: {type(exc).__name__}: {exc}\ninput ({len(data)} bytes): "
                                 f"{data[:300].hex()}") from exc
        took = time.perf_counter() - t0
        slowest = max(slowest, took)
        assert took < MAX_SECONDS_PER_INPUT, f"{name} iteration {it} took {took:.2f}s: {data[:300].hex()}"
    assert outcomes["refused"] > n // 20 and outcomes["ok"] > 0, outcomes  # the mutator reaches both sides
    return {**outcomes, "slowest": slowest}


# -- the DICOM walker ----------------------------------------------------------------------------------------
def _walker_seeds() -> tuple[list[bytes], list[bytes]]:
    """(files, data sets prefixed by one byte naming their transfer syntax: 0 implicit, 1 explicit LE,
    2 explicit BE), all valid: CT (explicit), MR (implicit), RT plan (sequences), JPEG 2000 (encapsulated),
    big endian, nested sequences."""
    files, datasets = [], []
    for name in ("CT_small.dcm", "MR_small_implicit.dcm", "rtplan.dcm", "JPEG2000.dcm", "MR_small_bigendian.dcm"):
        blob = sample_file(name).read_bytes()
        ts, off = rawdicom.split_file(blob)
        files.append(blob)
        datasets.append(bytes([_TS.index(ts) if ts in _TS else 1]) + blob[off:])
    datasets.append(b"\x01" + ident_elements() + nested_sequences(6))
    datasets.append(b"\x00" + nested_sequences(4, explicit=False))
    return files, datasets


_TS = [rawdicom.IMPLICIT_LE, rawdicom.EXPLICIT_LE, rawdicom.EXPLICIT_BE]


def _all(calls, allowed) -> None:
    """Run every call; each may fail only with `allowed`; re-raise the first allowed error at the end."""
    first = None
    for call in calls:
        try:
            call()
        except allowed as exc:
            first = first or exc
    if first is not None:
        raise first


def _walker_target(data: bytes) -> None:
    ts = _TS[data[0] % 3] if data else rawdicom.EXPLICIT_LE
    body = data[1:]
    _all([lambda: rawdicom.inspect_dataset(body, ts),
          lambda: rawdicom.walk_dataset(body, ts, set(rawdicom.TAGS.values())),
          lambda: rawdicom.canonical_digest(body, ts)], rawdicom.DicomFormatError)


def _deflate_target(data: bytes) -> None:
    c = zlib.compressobj(1, zlib.DEFLATED, -15)
    rawdicom.inspect_dataset(c.compress(data) + c.flush(), rawdicom.DEFLATED_LE)


def _fuzz_walker(n: int) -> None:
    files, datasets = _walker_seeds()
    allowed = (rawdicom.DicomFormatError,)
    run_fuzz("walker", _walker_target, datasets, allowed, n)
    run_fuzz("walker-file", rawdicom.inspect_file, files, allowed, max(n // 4, 500))
    run_fuzz("walker-deflated", _deflate_target, [d[1:] for d in datasets[:2]], allowed, max(n // 10, 200))
    comp = []
    for d in datasets[:2]:
        c = zlib.compressobj(6, zlib.DEFLATED, -15)
        comp.append(c.compress(d[1:]) + c.flush())
    run_fuzz("walker-deflate-stream", lambda d: rawdicom.inspect_dataset(d, rawdicom.DEFLATED_LE), comp,
             allowed, max(n // 10, 200))


# -- the Upper Layer parser and the proxy's auditor ---------------------------------------------------------
def _item(t: int, payload: bytes) -> bytes:
    return bytes([t, 0]) + struct.pack(">H", len(payload)) + payload


def _associate(pdu_type: int, contexts: bytes) -> bytes:
    body = (struct.pack(">H", 1) + b"\0\0" + b"ORTHANC".ljust(16) + b"MODALITY1".ljust(16) + bytes(32)
            + _item(0x10, b"1.2.840.10008.3.1.1.1") + contexts + _item(0x50, _item(0x51, struct.pack(">I", 16384))))
    return bytes([pdu_type, 0]) + struct.pack(">I", len(body)) + body


def _command(field: int, *, sop_class: str, dataset: bool, msg_id: int = 1, rsp: int | None = None,
             status: int | None = None, sop_uid: str | None = None) -> bytes:
    def el(tag_elem: int, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\0"
        return struct.pack("<HHI", 0, tag_elem, len(value)) + value
    body = el(0x0002, sop_class.encode()) + el(0x0100, struct.pack("<H", field))
    body += el(0x0110, struct.pack("<H", msg_id)) if rsp is None else el(0x0120, struct.pack("<H", rsp))
    body += el(0x0800, struct.pack("<H", 0 if dataset else 0x0101))
    if status is not None:
        body += el(0x0900, struct.pack("<H", status))
    if sop_uid:
        body += el(0x1000, sop_uid.encode())
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def _pdata(payload: bytes, header: int) -> bytes:
    item = struct.pack(">I", len(payload) + 2) + bytes([1, header]) + payload
    return bytes([4, 0]) + struct.pack(">I", len(item)) + item


def _ul_conversation() -> tuple[list[bytes], list[bytes]]:
    """(up PDUs, down PDUs) of one association: a C-STORE and a C-FIND, answered."""
    ts = b"1.2.840.10008.1.2"
    rq = _associate(1, _item(0x20, bytes([1, 0, 0, 0]) + _item(0x30, b"1.2.840.10008.5.1.4.1.1.2")
                             + _item(0x40, ts)) + _item(0x20, bytes([3, 0, 0, 0]) +
                             _item(0x30, b"1.2.840.10008.5.1.4.1.2.2.1") + _item(0x40, ts)))
    ac = _associate(2, _item(0x21, bytes([1, 0, 0, 0]) + _item(0x40, ts)) + _item(0x21, bytes([3, 0, 0, 0])
                                                                                    + _item(0x40, ts)))
    ds = sample_file("CT_small.dcm").read_bytes()
    _, off = rawdicom.split_file(ds)
    ident = struct.pack("<HHI", 0x0008, 0x0052, 6) + b"STUDY " + struct.pack("<HHI", 0x0010, 0x0020, 4) + b"P-01"
    store = _pdata(_command(1, sop_class="1.2.840.10008.5.1.4.1.1.2", dataset=True, sop_uid="1.2.3"), 3)
    store += _pdata(ds[off:off + 2000], 2)
    find = _pdata(_command(0x20, sop_class="1.2.840.10008.5.1.4.1.2.2.1", dataset=True, msg_id=2), 3)
    find += _pdata(ident, 2)
    up = [rq, store, find, bytes([5, 0, 0, 0, 0, 4, 0, 0, 0, 0])]
    down = [ac,
            _pdata(_command(0x8001, sop_class="1.2.840.10008.5.1.4.1.1.2", dataset=False, rsp=1, status=0), 3),
            _pdata(_command(0x8020, sop_class="1.2.840.10008.5.1.4.1.2.2.1", dataset=True, rsp=2, status=0xFF00),
                   3) + _pdata(ident, 2),
            _pdata(_command(0x8020, sop_class="1.2.840.10008.5.1.4.1.2.2.1", dataset=False, rsp=2, status=0), 3),
            bytes([6, 0, 0, 0, 0, 4, 0, 0, 0, 0])]
    return up, down


def _ul_target(data: bytes) -> None:
    """The proxy's path: split into PDUs (in uneven chunks), then the auditor over them, running what it
    asks to prepare; the first byte picks the direction split point."""
    reader = ul.PduReader()
    pdus = []
    step = 1 + (data[0] if data else 0) * 7
    for i in range(0, len(data), step):
        pdus += reader.feed(data[i:i + step])
    auditor = AssociationAuditor(peer="127.0.0.1:1", pacs_aet="ORTHANC", purpose="TREAT", default_issuer="H")
    direction = "up"
    for pdu_type, pdu in pdus:
        if pdu_type in (ul.A_ASSOCIATE_AC, ul.A_ASSOCIATE_RJ, ul.A_RELEASE_RP):
            direction = "down"
        elif pdu_type in (ul.A_ASSOCIATE_RQ, ul.A_RELEASE_RQ):
            direction = "up"
        elif pdu_type == ul.P_DATA_TF and len(pdu) > 11 and pdu[11] & 1:
            # a command PDV: responses (CommandField has 0x8000) come from the PACS in this conversation
            at = pdu.find(b"\x00\x00\x00\x01\x02\x00\x00\x00")
            direction = "down" if at > 0 and len(pdu) > at + 9 and pdu[at + 9] & 0x80 else "up"
        for action in auditor.feed(direction, pdu_type, pdu):
            fn = getattr(action, "fn", None)
            if fn is not None:
                try:
                    fn()
                except rawdicom.DicomFormatError:
                    pass  # the proxy journals it as a malformed data set
    for _, pdu in pdus:
        if pdu[0] == ul.A_ASSOCIATE_RQ:
            ul.parse_associate_rq(pdu)
        elif pdu[0] == ul.A_ASSOCIATE_AC:
            ul.parse_associate_ac(pdu)


def _fuzz_ul(n: int) -> None:
    up, down = _ul_conversation()
    ordered = [up[0], down[0], up[1], down[1], up[2], down[2], down[3], up[3], down[4]]
    seeds = [b"".join(ordered), b"".join(ordered[:5]), up[0], up[1]]
    run_fuzz("ul", _ul_target, seeds, (ul.ProtocolError, rawdicom.DicomFormatError), n)
    cmds = [_command(1, sop_class="1.2.840.10008.5.1.4.1.1.2", dataset=True, sop_uid="1.2.3"),
            _command(0x8020, sop_class="1.2.840.10008.5.1.4.1.2.2.1", dataset=True, rsp=2, status=0xFF00),
            nested_sequences(5, explicit=False)]
    run_fuzz("ul-command", ul.parse_command, cmds, (ul.ProtocolError, rawdicom.DicomFormatError), n)


# -- the syslog / ATNA parser ---------------------------------------------------------------------------------
def _syslog_target(data: bytes) -> None:
    framer = atna.Framer(max_message=1 << 16)
    step = 1 + (data[-1] if data else 0) % 97
    msgs = []
    for i in range(0, len(data), step):
        msgs += framer.feed(data[i:i + step])
    for raw in msgs or [data]:
        try:
            msg = atna.parse_syslog(raw)
        except atna.SyslogError:
            continue
        atna.parse_audit(msg.msg, purpose="TREAT", default_issuer="H")


def _fuzz_syslog(n: int) -> None:
    msgs = [syslog(audit_xml()), syslog(audit_xml(event="110105", action="D", source="orthanc-a")),
            syslog(audit_xml(event="110112", action="E", study=None)),
            b'<13>1 - h a - - [ex@1 k="v \\] x"][b@2] hi']
    seeds = [frame(m) for m in msgs] + [msgs[0] + b"\n" + msgs[1] + b"\n", msgs[2]]
    run_fuzz("syslog", _syslog_target, seeds, (atna.SyslogError, atna.AuditMessageError), n)


FUZZERS = {"walker": _fuzz_walker, "ul": _fuzz_ul, "syslog": _fuzz_syslog}


@pytest.mark.parametrize("parser", sorted(FUZZERS))
def test_fuzz_quick(parser):
    FUZZERS[parser](FUZZ_QUICK)


@pytest.mark.soak
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("parser", sorted(FUZZERS))
def test_fuzz_soak(parser):
    FUZZERS[parser](FUZZ_SOAK)


# -- properties (hypothesis): framing does not depend on how the stream is cut ---------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from([0, 1, 2]), min_size=1, max_size=6), st.lists(st.integers(1, 700), max_size=40))
def test_syslog_framing_is_independent_of_chunking(which, cuts):
    msgs = [syslog(audit_xml()), syslog(audit_xml(event="110105", action="D")), b"<13>1 - h a - - - x"]
    stream = b"".join(frame(msgs[i]) if i != 2 else msgs[i] + b"\n" for i in which)
    framer, out, pos = atna.Framer(), [], 0
    for n in cuts:
        out += framer.feed(stream[pos:pos + n])
        pos += n
    out += framer.feed(stream[pos:])
    assert out == [msgs[i] for i in which] and framer.error is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048), st.sampled_from(_TS + [rawdicom.DEFLATED_LE]))
def test_walker_on_arbitrary_bytes(data, ts):
    for fn in (rawdicom.inspect_dataset, rawdicom.canonical_digest, rawdicom.walk_dataset):
        try:
            fn(data, ts)
        except rawdicom.DicomFormatError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_ul_reader_on_arbitrary_bytes(data):
    try:
        for pdu_type, pdu in ul.PduReader().feed(data):
            if pdu_type == ul.A_ASSOCIATE_RQ:
                ul.parse_associate_rq(pdu)
            elif pdu_type == ul.A_ASSOCIATE_AC:
                ul.parse_associate_ac(pdu)
            elif pdu_type == ul.P_DATA_TF:
                ul.MessageAssembler().feed(pdu)
    except ul.ProtocolError:
        pass
