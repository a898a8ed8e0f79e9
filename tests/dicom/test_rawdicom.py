"""The raw walker agrees with pydicom on UIDs and pixel bytes; the UL parser on real PDUs."""

from __future__ import annotations

import hashlib
import io
import struct

import pytest
from dicom_helpers import sample_file
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from node.dicom import rawdicom, ul


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm", "SC_rgb_rle.dcm",
                                  "MR_small_bigendian.dcm", "MR_small_RLE.dcm", "image_dfl.dcm"])
def test_walker_matches_pydicom(name):
    path = sample_file(name)
    info = rawdicom.inspect_file(path.read_bytes())
    ds = dcmread(path)
    assert info.get("SOPInstanceUID") == ds.SOPInstanceUID
    assert info.get("StudyInstanceUID") == ds.get("StudyInstanceUID")
    if "PixelData" in ds:
        assert info.pixel_digest == hashlib.sha256(ds.PixelData).hexdigest()
    else:
        assert info.pixel_digest is None


def test_pixel_digest_survives_reencoding_and_metadata_edits(tmp_path):
    ds = dcmread(sample_file("CT_small.dcm"))
    original = rawdicom.inspect_file(sample_file("CT_small.dcm").read_bytes())
    ds.PatientName = "Changed^Name"
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=True, little_endian=True)
    edited = rawdicom.inspect_file(buf.getvalue())
    assert edited.pixel_digest == original.pixel_digest
    assert edited.digest != original.digest
    arr = bytearray(ds.PixelData)
    arr[100] ^= 0xFF
    ds.PixelData = bytes(arr)
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=True, little_endian=True)
    assert rawdicom.inspect_file(buf.getvalue()).pixel_digest != original.pixel_digest


@pytest.mark.parametrize("name", ["CT_small.dcm", "rtplan.dcm", "MR_small.dcm"])
def test_digest_is_the_same_across_equivalent_encodings(name):
    """storescu and PACSs convert explicit <-> implicit VR LE: the recorded digest must not depend on it."""
    ds = dcmread(sample_file(name))
    original = rawdicom.inspect_file(sample_file(name).read_bytes()).digest
    variants = []
    for implicit in (True, False):
        buf = io.BytesIO()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        ds.save_as(buf, implicit_vr=implicit, little_endian=True)
        variants.append(buf.getvalue())
    # every sequence with undefined length, plus group lengths
    for elem in ds.iterall():
        if elem.VR == "SQ":
            elem.is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=True, little_endian=True)
    variants.append(buf.getvalue())
    for blob in variants:
        assert rawdicom.inspect_file(blob).digest == original
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".1"
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=True, little_endian=True)
    assert rawdicom.inspect_file(buf.getvalue()).digest != original


@pytest.mark.parametrize("blob", [b"", b"hello world, not DICOM at all" * 3, b"\x00" * 128 + b"DICM" + b"\x02\x00",
                                  sample_file("CT_small.dcm").read_bytes()[:2000]])
def test_malformed_input_raises_a_clear_error(blob):
    with pytest.raises(rawdicom.DicomFormatError):
        rawdicom.inspect_file(blob)


def _rq(called=b"PACS", calling=b"CT1"):
    ctx = bytes([1, 0, 0, 0])
    ctx += b"\x30\x00" + struct.pack(">H", 25) + b"1.2.840.10008.5.1.4.1.1.2"
    ctx += b"\x40\x00" + struct.pack(">H", 17) + b"1.2.840.10008.1.2"
    body = (struct.pack(">H", 1) + b"\x00\x00" + called.ljust(16) + calling.ljust(16) + bytes(32)
            + b"\x10\x00" + struct.pack(">H", 21) + b"1.2.840.10008.3.1.1.1"
            + b"\x20\x00" + struct.pack(">H", len(ctx)) + ctx)
    return bytes([1, 0]) + struct.pack(">I", len(body)) + body


def test_ul_parses_association_request_and_splits_pdus_across_chunks():
    pdu = _rq()
    reader = ul.PduReader()
    out = []
    for i in range(0, len(pdu) * 2, 7):  # two PDUs fed 7 bytes at a time
        out += reader.feed((pdu + pdu)[i:i + 7])
    assert [t for t, _ in out] == [ul.A_ASSOCIATE_RQ] * 2
    rq = ul.parse_associate_rq(out[0][1])
    assert (rq.called_ae, rq.calling_ae) == ("PACS", "CT1")
    assert rq.contexts == {1: ("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2"])}
    assert ul.parse_associate_rq(ul.with_called_ae(pdu, "ORTHANC")).called_ae == "ORTHANC"


def test_ul_rejects_garbage():
    with pytest.raises(ul.ProtocolError):
        ul.PduReader().feed(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(ul.ProtocolError):
        ul.PduReader().feed(bytes([4, 0]) + struct.pack(">I", 1 << 30))
