"""Tx encoding, signing and the strict decoder (bad input is refused with TxError naming the problem)."""

from __future__ import annotations

import msgpack
import pytest
from nacl.signing import SigningKey

from node.ledger.tx import (
    MAX_TX_BYTES,
    TX_DOMAIN,
    TxError,
    decode_tx,
    encode_tx,
    sign_body,
    sign_fields,
    sign_fields_tx,
)

KEY = SigningKey(b"\x05" * 32)


def fields(**over):
    f = {"v": 1, "chain": "c", "type": "instances.accessed", "member": "hosp-a", "ts": 1, "nonce": b"n" * 16,
         "patient": b"p" * 16, "study": b"s" * 16, "user": b"u" * 16, "purpose": "TREAT", "outcome": 0,
         "action": "R"}
    f.update(over)
    return {k: v for k, v in f.items() if v is not None}


def resign(body_map: dict, key: SigningKey = KEY, sort: bool = True) -> bytes:
    items = sorted(body_map.items()) if sort else body_map.items()
    body = msgpack.packb(dict(items), use_bin_type=True)
    return encode_tx(body, sign_body(body, key))


def test_round_trip_and_hash_is_deterministic():
    raw = sign_fields(fields(), KEY)
    tx = decode_tx(raw)
    assert tx.fields["client"] == bytes(KEY.verify_key)
    assert tx.type == "instances.accessed" and tx.member == "hosp-a"
    assert sign_fields(fields(), KEY) == raw  # ed25519 is deterministic: same fields, same bytes
    assert decode_tx(raw).hash == tx.hash


@pytest.mark.parametrize("over", [{}, {"series": [b"x" * 16, b"y" * 16], "n_instances": 7}, {"user": None, "ae": "CT1"},
                                  {"type": "query", "study": None}])
def test_sign_fields_tx_is_exactly_what_decode_tx_reads_back(over):
    """The own-tx path (node: submit_event) admits the Tx sign_fields_tx returns without decoding its bytes
    again: it must be the same Tx decode_tx gives for them, field types and key order included."""
    tx = sign_fields_tx(fields(**over), KEY)
    again = decode_tx(tx.raw)
    assert tx.raw == sign_fields(fields(**over), KEY)
    assert (tx.hash, tx.body, tx.sig) == (again.hash, again.body, again.sig)
    assert list(tx.fields.items()) == list(again.fields.items())
    assert [type(v) for v in tx.fields.values()] == [type(v) for v in again.fields.values()]


@pytest.mark.parametrize("over, message", [({"outcome": True}, "outcome"), ({"patient": b"p" * 15}, "patient"),
                                            ({"ts": 1.0}, "ts"), ({"colour": "red"}, "colour"),
                                            ({"client": b"c" * 32}, "client: does not match")])
def test_sign_fields_tx_refuses_what_sign_fields_refuses(over, message):
    for sign in (sign_fields, sign_fields_tx):
        with pytest.raises(TxError, match=message):
            sign(fields(**over), KEY)


def test_signature_is_domain_separated():
    raw = sign_fields(fields(), KEY)
    tx = decode_tx(raw)
    assert KEY.verify_key.verify(TX_DOMAIN + tx.body, tx.sig)
    # A signature over the bare body (no domain) does not verify as a tx.
    bad = encode_tx(tx.body, KEY.sign(tx.body).signature)
    with pytest.raises(TxError, match="signature"):
        decode_tx(bad)


def test_wrong_signer_and_flipped_signature_rejected():
    tx = decode_tx(sign_fields(fields(), KEY))
    other = SigningKey(b"\x06" * 32)
    with pytest.raises(TxError, match="signature"):
        decode_tx(encode_tx(tx.body, sign_body(tx.body, other)))
    sig = bytearray(tx.sig)
    sig[5] ^= 1
    with pytest.raises(TxError, match="signature"):
        decode_tx(encode_tx(tx.body, bytes(sig)))


@pytest.mark.parametrize("over, message", [
    ({"colour": "red"}, "colour: unknown field"),
    ({"grantee": "x"}, "grantee: not a field of instances.accessed"),
    ({"type": "instances.viewed"}, "type: unknown transaction type"),
    ({"purpose": "FUN"}, "purpose: must be an HL7 PurposeOfUse code"),
    ({"purpose": ["TREAT"]}, "purpose: must be"),
    ({"outcome": 3}, "outcome"),
    ({"outcome": True}, "outcome"),
    ({"patient": b"short"}, "patient"),
    ({"ts": -1}, "ts"),
    ({"ts": 1.5}, "ts"),
    ({"study": None}, "study: required"),
    ({"user": None}, "actor"),
    ({"v": 2}, "v: must be"),
    ({"nonce": b"1234567"}, "nonce"),
    ({"series": []}, "series"),
    ({"series": [b"x" * 16] * 257}, "series|array"),
])
def test_bad_fields_rejected_with_named_field(over, message):
    f = fields(**over)
    f["client"] = bytes(KEY.verify_key)
    with pytest.raises(TxError, match=message):
        decode_tx(resign(f))


@pytest.mark.parametrize("over, message", [
    ({"patient": b"p" * 15}, "patient"), ({"outcome": 3}, "outcome"), ({"outcome": True}, "outcome"),
    ({"purpose": "FUN"}, "purpose"), ({"action": "X"}, "action"), ({"ts": -5}, "ts"), ({"v": 2}, "v"),
    ({"nonce": b"x" * 33}, "nonce"), ({"user": "u" * 16}, "user"), ({"chain": ""}, "chain"),
    ({"series": [b"x" * 16, b"y" * 15]}, "series"), ({"member": "m" * 65}, "member"),
])
def test_known_shape_with_bad_values_still_rejected(over, message):
    # a valid tx of the same shape first, so the decoder's per-shape fast path is the one checking
    good = fields(**({"series": [b"x" * 16]} if "series" in over else {}))
    good["client"] = bytes(KEY.verify_key)
    decode_tx(resign(good))
    bad = dict(good, **over)
    with pytest.raises(TxError, match=f"^{message}"):
        decode_tx(resign(bad))


def test_membership_and_evidence_types():
    raw = sign_fields(fields(type="evidence.equivocation", offender=2, evidence=[b"a" * 100, b"b" * 100],
                             patient=None, study=None, user=None, purpose=None, outcome=None, action=None), KEY)
    assert decode_tx(raw).fields["evidence"] == [b"a" * 100, b"b" * 100]
    with pytest.raises(TxError, match="evidence"):
        sign_fields(fields(type="evidence.equivocation", offender=2, evidence=[b"a", b"a"], patient=None,
                           study=None, user=None, purpose=None, outcome=None, action=None), KEY)
    raw = sign_fields({"v": 1, "chain": "c", "type": "member.added", "member": "hosp-a", "ts": 1,
                       "nonce": b"n" * 8, "subject": "hosp-e", "subject_key": b"k" * 32}, KEY)
    assert decode_tx(raw).type == "member.added"


def test_non_canonical_encodings_rejected():
    f = fields(client=bytes(KEY.verify_key))
    # keys out of order
    with pytest.raises(TxError, match="sorted"):
        decode_tx(resign(dict(reversed(sorted(f.items()))), sort=False))
    # integer in a longer form than needed (uint64 for 0)
    body = msgpack.packb(dict(sorted(f.items())), use_bin_type=True)
    long_zero = body.replace(b"\xa7outcome\x00", b"\xa7outcome\xcf" + b"\x00" * 8)
    assert long_zero != body
    with pytest.raises(TxError, match="non-canonical"):
        decode_tx(encode_tx(long_zero, sign_body(long_zero, KEY)))
    # string sent as bin (use_bin_type=False packs bytes as str / raw)
    body_old = msgpack.packb(dict(sorted(f.items())), use_bin_type=False)
    with pytest.raises(TxError):
        decode_tx(encode_tx(body_old, sign_body(body_old, KEY)))
    # outer array with a long bin header
    good = sign_fields(f, KEY)
    tx = decode_tx(good)
    outer = b"\x92" + b"\xc6" + len(tx.body).to_bytes(4, "big") + tx.body + b"\xc4\x40" + tx.sig
    with pytest.raises(TxError, match="non-canonical"):
        decode_tx(outer)
    # trailing bytes
    with pytest.raises(TxError, match="msgpack"):
        decode_tx(good + b"\x00")


@pytest.mark.parametrize("raw", [b"", b"\xc1", b"\x90", b"\x92\x01\x02", b"\x81\xa1a\x01",
                                 b"\x92\xc4\x01\x80\xc4\x01\x00", b"\xdd\xff\xff\xff\xff",
                                 msgpack.packb([msgpack.ExtType(1, b"x"), b"s" * 64]),
                                 b"\x91" * 5000 + b"\x00", b"\xdc\xff\xff" + b"\x00" * 10])
def test_garbage_rejected(raw):
    with pytest.raises(TxError):
        decode_tx(raw)


def test_oversized_rejected():
    with pytest.raises(TxError, match="limit"):
        decode_tx(b"\x00" * (MAX_TX_BYTES + 1))


def test_body_must_be_map_with_known_type():
    body = msgpack.packb([1, 2])
    with pytest.raises(TxError, match="map"):
        decode_tx(encode_tx(body, sign_body(body, KEY)))
