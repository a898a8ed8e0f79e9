"""Txs signed in a batch (node.ledger.tx): one signature over a Merkle root, an audit path per tx.

What a member gains is one Ed25519 check per batch instead of one per tx; what it must never give up is
that each tx stands alone as evidence (a receipt verifies offline), that nobody but the signer can make a
second valid form of a tx, and that no proof, signature or cache entry can vouch for another body.
"""

from __future__ import annotations

import hashlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from node.ledger import tx as txmod
from node.ledger.tx import (
    MAX_SIGN_BATCH,
    TX_BATCH_DOMAIN,
    TxError,
    decode_tx,
    encode_tx,
    sign_bodies,
    sign_body,
    signable_body,
)

KEY = SigningKey(b"\x05" * 32)
OTHER = SigningKey(b"\x06" * 32)


def fields(n: int, **over) -> dict:
    f = {"v": 1, "chain": "c", "type": "instances.accessed", "member": "hosp-a", "ts": 1 + n,
         "nonce": n.to_bytes(16, "big"), "patient": b"p" * 16, "study": b"s" * 16, "user": b"u" * 16,
         "purpose": "TREAT", "outcome": 0, "action": "R"}
    f.update(over)
    return f


def batch(n: int, key: SigningKey = KEY, first: int = 0):
    return sign_bodies([signable_body(fields(first + i), key) for i in range(n)], key)


@pytest.fixture(autouse=True)
def fresh_cache():
    txmod._BATCHES_OK.clear()  # each test checks signatures from scratch, not from an earlier test's batch
    yield
    txmod._BATCHES_OK.clear()


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=70))
def test_every_tx_of_a_batch_decodes_alone_to_what_was_signed(n):
    txmod._BATCHES_OK.clear()
    txs = batch(n)
    assert len({tx.sig for tx in txs}) == 1  # one signature for all
    for tx in txs:
        txmod._BATCHES_OK.clear()  # alone: as an auditor holding only this tx's receipt checks it
        again = decode_tx(tx.raw)
        assert (again.hash, again.body, again.sig, again.proof) == (tx.hash, tx.body, tx.sig, tx.proof)
        assert again.hash == hashlib.sha256(tx.raw).digest()
        assert list(again.fields.items()) == list(tx.fields.items())
    if n == 1:
        assert txs[0].proof == b"" and len(msgpack.unpackb(txs[0].raw)) == 2  # a single tx is signed alone


def test_a_batch_is_checked_with_one_signature_check(monkeypatch):
    txs = batch(16)
    txmod._BATCHES_OK.clear()  # as a replica that did not sign it
    calls = []
    real = txmod._sign_open
    monkeypatch.setattr(txmod, "_sign_open", lambda signed, client: calls.append(1) or real(signed, client))
    for tx in txs:
        decode_tx(tx.raw)
    assert len(calls) == 1


def test_batches_longer_than_the_limit_are_split():
    txs = batch(MAX_SIGN_BATCH + 3)
    assert len({tx.sig for tx in txs}) == 2
    assert txs[-1].proof == b"" or len({tx.sig for tx in txs[MAX_SIGN_BATCH:]}) == 1
    for tx in txs[-3:]:
        decode_tx(tx.raw)


def test_a_longer_call_is_split_into_batches_of_even_size():
    txs = sign_bodies([signable_body(fields(i), KEY) for i in range(17)], KEY, 16)
    sizes = [txmod._PROOF_HEAD.unpack_from(tx.proof)[1] for tx in txs]
    assert sizes == [8] * 8 + [9] * 9 and len({tx.sig for tx in txs}) == 2


def _parts(raw: bytes):
    body, sig, proof = msgpack.unpackb(raw)
    return body, sig, proof


def _refused(raw: bytes, what: str = "signature") -> None:
    txmod._BATCHES_OK.clear()
    with pytest.raises(TxError) as err:
        decode_tx(raw)
    assert err.value.field in (what, "tx", "proof")


def test_a_proof_moved_to_another_body_is_refused():
    txs = batch(8)
    decode_tx(txs[0].raw)  # the batch's signature is now in the cache: it must not vouch for anything else
    body0, sig, proof3 = _parts(txs[0].raw)[0], txs[3].sig, txs[3].proof
    with pytest.raises(TxError, match="signature"):
        decode_tx(encode_tx(body0, sig, proof3))  # cached root, wrong leaf


def test_a_body_the_signer_never_signed_is_refused_with_any_proof_of_its_batch():
    txs = batch(4)
    decode_tx(txs[1].raw)  # cached
    forged = signable_body(fields(99), KEY)[0]
    for tx in txs:
        with pytest.raises(TxError, match="signature"):
            decode_tx(encode_tx(forged, tx.sig, tx.proof))


def test_leaf_2_of_3_does_not_pass_as_leaf_1_of_2_or_with_another_index():
    """Signing the size keeps a path valid only in the tree it came from: nobody but the signer can make a
    second wire form (a second hash) of a tx."""
    txs = batch(3)
    body, sig, proof = _parts(txs[2].raw)
    index, size = txmod._PROOF_HEAD.unpack_from(proof)
    assert (index, size) == (2, 3)
    path = proof[4:]
    for i, s in [(1, 2), (0, 2), (2, 4), (3, 4), (1, 3), (0, 3), (2, 2)]:
        for p in (path, path[:32], path + b"\x00" * 32):
            if (i, s, p) == (2, 3, path):
                continue
            _refused(encode_tx(body, sig, txmod._PROOF_HEAD.pack(i, s) + p))
    decode_tx(txs[2].raw)


def test_size_one_and_malformed_proofs_are_refused():
    txs = batch(2)
    body, sig, proof = _parts(txs[0].raw)
    single_root = hashlib.sha256(b"\x00" + hashlib.sha256(body).digest()).digest()
    sig1 = KEY.sign(TX_BATCH_DOMAIN + (1).to_bytes(2, "big") + single_root).signature
    _refused(encode_tx(body, sig1, txmod._PROOF_HEAD.pack(0, 1)))  # a tree of one: the body is signed alone
    _refused(msgpack.packb([body, sig, b""]))  # three items with an empty proof
    _refused(msgpack.packb([body, sig, proof[:-1]]))  # not whole hashes
    _refused(msgpack.packb([body, sig, proof[:4]]))  # no hash at all
    _refused(msgpack.packb([body, sig, proof + b"\x00" * 32 * 8]))  # beyond 8 hashes
    _refused(msgpack.packb([body, sig, proof, b""]))  # four items
    _refused(msgpack.packb([body, sig, 7]))  # not bytes


def test_a_non_canonical_outer_encoding_is_refused():
    tx = batch(2)[1]
    body, sig, proof = _parts(tx.raw)
    # the proof in a bin16 header although it fits bin8: the same tx in a second wire form (a second hash)
    longer = b"\x93" + msgpack.packb(body) + msgpack.packb(sig) + b"\xc5" + len(proof).to_bytes(2, "big") + proof
    assert msgpack.unpackb(longer) == [body, sig, proof]
    with pytest.raises(TxError, match="non-canonical"):
        decode_tx(longer)


def test_another_key_cannot_reuse_a_batch_signature():
    txs = batch(2)
    body, sig, proof = _parts(txs[0].raw)
    decode_tx(txs[0].raw)  # cached under KEY
    theirs = signable_body(fields(0), OTHER)[0]  # same fields, the other key as client
    with pytest.raises(TxError, match="signature"):
        decode_tx(encode_tx(theirs, sig, proof))


def test_a_tx_signed_alone_and_the_same_body_in_a_batch_are_both_valid_and_differ():
    body, decoded = signable_body(fields(5), KEY)
    alone = encode_tx(body, sign_body(body, KEY))
    in_batch = sign_bodies([(body, decoded), signable_body(fields(6), KEY)], KEY)[0]
    assert decode_tx(alone).body == decode_tx(in_batch.raw).body
    assert alone != in_batch.raw  # hence node.runtime.own_txs: a member finds its own tx by the body


def test_signing_refuses_a_body_of_another_client():
    with pytest.raises(TxError, match="client"):
        sign_bodies([signable_body(fields(0), KEY), signable_body(fields(1), OTHER)], KEY)


def test_a_body_too_long_to_carry_a_proof_is_signed_alone_in_its_place():
    big = fields(1, type="instances.stored", action="C", instances=[bytes([i]) * 16 for i in range(256)],
                 series=[bytes([i, 1]) * 8 for i in range(256)], n_instances=5)
    items = [signable_body(fields(0), KEY), signable_body(big, KEY), signable_body(fields(2), KEY)]
    body_len = len(items[1][0])
    limit = txmod._MAX_BATCHED_BODY
    try:
        txmod._MAX_BATCHED_BODY = body_len - 1  # as if this body were near 16 KiB
        txs = sign_bodies(items, KEY)
    finally:
        txmod._MAX_BATCHED_BODY = limit
    assert [tx.body for tx in txs] == [b for b, _f in items]
    assert txs[1].proof == b"" and txs[0].proof and txs[0].sig == txs[2].sig
    for tx in txs:
        decode_tx(tx.raw)
