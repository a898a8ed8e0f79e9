"""Property tests: canonical tx encoding round-trips and is the only accepted form; Merkle proofs."""

from __future__ import annotations

import hashlib

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from node.ledger.merkle import (
    EMPTY_ROOT,
    inclusion_path,
    merkle_levels,
    merkle_root,
    root_from_path,
    verify_inclusion,
)
from node.ledger.tx import PURPOSES, TxError, decode_tx, schema, sign_fields
from node.vocabulary import SCOPES

KEY = SigningKey(b"\x0b" * 32)
token = st.binary(min_size=16, max_size=16)
digest = st.binary(min_size=32, max_size=32)
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=16)
VALUES = {
    "user": token, "ae": text, "peer_ae": text, "patient": token, "study": token,
    "series": st.lists(token, min_size=1, max_size=4), "instances": st.lists(token, min_size=1, max_size=4),
    "n_series": st.integers(0, 2**32 - 1), "n_instances": st.integers(0, 2**32 - 1), "digest": digest,
    "pixel_digest": digest, "source_digest": digest, "derived_digest": digest,
    "purpose": st.sampled_from(sorted(PURPOSES)), "outcome": st.sampled_from([0, 4, 8, 12]),
    "action": st.sampled_from("CRUDE"), "grantee": token, "scope": st.sampled_from(sorted(SCOPES)),
    "expires": st.integers(0, 2**63 - 1),
    "subject": text, "subject_key": digest, "offender": st.integers(0, 65535), "peer_id": text, "addr": text,
    "evidence": st.lists(st.binary(min_size=1, max_size=64), min_size=2, max_size=2, unique=True),
    "modality": text, "body_part": text, "study_date": st.integers(19000101, 29991231),
    "project": st.from_regex(r"[A-Z0-9][A-Z0-9._-]{0,31}", fullmatch=True),
    "date_from": st.integers(19000101, 29991231), "date_to": st.integers(19000101, 29991231),
    "waiver": st.integers(0, 1),
}
TYPES = ["instances.stored", "instances.accessed", "query", "transfer.begin", "instances.transferred", "export",
         "import", "study.deleted", "deidentified", "consent.granted", "consent.revoked",
         "research.access.granted", "member.added", "member.removed", "client.added", "client.removed",
         "evidence.equivocation", "research.project.registered", "research.project.approved", "consent.vote"]


@st.composite
def tx_fields(draw):
    tx_type = draw(st.sampled_from(TYPES))
    required, optional = schema(tx_type)
    f = {"v": 1, "chain": draw(text), "type": tx_type, "member": draw(text), "ts": draw(st.integers(0, 2**63 - 1)),
         "nonce": draw(st.binary(min_size=8, max_size=32))}
    for name in sorted(required - f.keys() - {"client"}):
        f[name] = draw(VALUES[name])
    for name in sorted(optional):
        if draw(st.booleans()):
            f[name] = draw(VALUES[name])
    if tx_type in TYPES[:9] and "user" not in f and "ae" not in f:
        f["user"] = draw(token)
    return f


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tx_fields())
def test_canonical_round_trip(fields):
    raw = sign_fields(fields, KEY)
    tx = decode_tx(raw)
    assert tx.fields == dict(fields, client=bytes(KEY.verify_key))
    assert sign_fields(tx.fields, KEY) == raw
    assert tx.hash == hashlib.sha256(raw).digest()


@settings(max_examples=300, deadline=None)
@given(tx_fields(), st.data())
def test_any_single_byte_change_is_rejected_or_a_different_valid_tx(fields, data):
    raw = sign_fields(fields, KEY)
    pos = data.draw(st.integers(0, len(raw) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[pos]))
    mutated = raw[:pos] + bytes([new]) + raw[pos + 1:]
    try:
        tx = decode_tx(mutated)
    except TxError:
        return
    raise AssertionError(f"mutated tx accepted: {tx.fields}")  # the signature covers every body byte


@settings(max_examples=200, deadline=None)
@given(tx_fields(), st.sampled_from(["long_int", "reorder", "str8"]))
def test_other_encodings_of_the_same_fields_are_rejected(fields, how):
    tx = decode_tx(sign_fields(fields, KEY))
    f = dict(tx.fields)
    if how == "reorder":
        body = msgpack.packb(dict(sorted(f.items(), reverse=True)), use_bin_type=True)
    elif how == "long_int":
        body = msgpack.packb(dict(sorted(f.items())), use_bin_type=True).replace(
            b"\xa1v\x01", b"\xa1v\xcd\x00\x01", 1)
    else:  # key "ts" as str8 instead of fixstr
        body = msgpack.packb(dict(sorted(f.items())), use_bin_type=True).replace(b"\xa2ts", b"\xd9\x02ts", 1)
    sig = KEY.sign(b"radchain/tx/v1\x00" + body).signature
    try:
        decode_tx(msgpack.packb([body, sig], use_bin_type=True))
    except TxError:
        return
    raise AssertionError("non-canonical body accepted")


def reference_root(leaves: list[bytes]) -> bytes:
    """RFC 9162 MTH, written recursively as in the RFC."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + reference_root(leaves[:k]) + reference_root(leaves[k:])).digest()


def reference_path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m < k:
        return reference_path(m, leaves[:k]) + [reference_root(leaves[k:])]
    return reference_path(m - k, leaves[k:]) + [reference_root(leaves[:k])]


hashes = st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=70, unique=True)


@settings(max_examples=200, deadline=None)
@given(hashes, st.data())
def test_merkle_root_and_paths_match_rfc_9162(leaves, data):
    root = merkle_root(leaves)
    assert root == reference_root(leaves)
    levels = merkle_levels(leaves)
    m = data.draw(st.integers(0, len(leaves) - 1))
    path = inclusion_path(levels, m)
    assert path == reference_path(m, leaves)
    assert verify_inclusion(leaves[m], m, len(leaves), path, root)
    assert root_from_path(leaves[m], m, len(leaves), path) == root


@settings(max_examples=200, deadline=None)
@given(hashes, st.data())
def test_merkle_proof_fails_for_anything_else(leaves, data):
    root = merkle_root(leaves)
    n = len(leaves)
    m = data.draw(st.integers(0, n - 1))
    path = inclusion_path(leaves, m)
    other = data.draw(st.binary(min_size=32, max_size=32).filter(lambda h: h != leaves[m]))
    assert not verify_inclusion(other, m, n, path, root)
    if n > 1:
        wrong = data.draw(st.integers(0, n - 1).filter(lambda i: leaves[i] != leaves[m]))
        assert not verify_inclusion(leaves[m], wrong, n, path, root)
    if path:
        bad = list(path)
        i = data.draw(st.integers(0, len(bad) - 1))
        bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
        assert not verify_inclusion(leaves[m], m, n, bad, root)
        assert not verify_inclusion(leaves[m], m, n, path[:-1], root)
    assert not verify_inclusion(leaves[m], m, n, path + [root], root)
    assert not verify_inclusion(leaves[m], n, n, path, root)
    assert not verify_inclusion(leaves[m], n, n, path, None)  # an invalid proof matches no root, not even None
