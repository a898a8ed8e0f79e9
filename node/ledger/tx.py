"""Transactions: the canonical msgpack encoding, ed25519 signatures and the strict decoder.

Wire forms of a signed transaction (what is gossiped, ordered and stored)::

    msgpack array [body: bin, sig: bin(64)]                 signed alone
    msgpack array [body: bin, sig: bin(64), proof: bin]     signed in a batch

``body`` is the canonical msgpack encoding of a map of fields (below). Signed alone, ``sig`` is the ed25519
signature of the ``client`` key over ``TX_DOMAIN + body``. Signed in a batch (a member signing its own
clients' events, node.runtime.own_txs), ``sig`` is the client key's signature over ``TX_BATCH_DOMAIN +
size u16 + root``, where ``root`` is the RFC 9162 Merkle root (node.ledger.merkle) over the batch's
``sha256(body)`` digests, and ``proof`` is ``index u16 | size u16 | audit path`` (32 bytes per hash, exactly
as many as RFC 9162 gives that index in a tree of that size; 2 <= size <= MAX_SIGN_BATCH). One check of the
batch's signature then serves all its txs: a verifier remembers each (key, signature, size, root) it
checked and needs only the path's hashes for the batch's other txs. Signing the size too keeps a path for
leaf 2 of 3 from passing as leaf 1 of 2, so nobody but the signer can make a second valid form of a tx.

The signature covers the body bytes exactly as sent, so a verifier never re-encodes to check it. The tx
hash is ``sha256(wire bytes)``. Ed25519 signatures are deterministic and libsodium rejects non-canonical
ones, so one set of fields signed alone by one key has one wire form; a member that signs the same fields
in two batches would get two, which is why a member finds its own earlier tx by the body's digest before
signing an event again (``event_id`` submissions stay idempotent: node.runtime.own_txs).

Canonical body: a msgpack map whose keys are strings in ascending order, integers in their shortest form,
strings as str, byte strings as bin, no nil, no float, no ext, absent optional fields omitted, each array at
most ``MAX_LIST`` items. The decoder checks this by re-encoding the decoded map and comparing bytes, so any
other encoding of the same values is refused (``TxError``), as are unknown fields, missing required fields,
values of the wrong type or size, and anything longer than ``MAX_TX_BYTES``.

Field names are part of the public contract (RPC, receipts, other implementations); see docs/LEDGER.md.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass

import msgpack
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey

from node.ledger.merkle import inclusion_path, merkle_levels, root_from_path
from node.vocabulary import (
    ACTIONS,
    AUDIT_TYPES,
    CONSENT_TYPES,
    OUTCOMES,
    SCOPES,
    CodeError,
    check_project_code,
)

try:  # libsodium through PyNaCl's cffi module: no per-call output allocation and copy (~2 us per tx)
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib
except ImportError:  # pragma: no cover - a PyNaCl without the cffi module layout
    _lib = None

__all__ = [
    "TX_DOMAIN", "TX_BATCH_DOMAIN", "MAX_SIGN_BATCH", "TX_VERSION", "MAX_TX_BYTES", "MAX_LIST", "TOKEN_BYTES", "TxError", "Tx", "TX_TYPES", "TX_TYPE_ORDER",
    "AUDIT_TYPES", "CONSENT_TYPES", "MEMBERSHIP_TYPES", "RESEARCH_TYPES", "OPRF_TYPES", "PURPOSES", "OUTCOMES",
    "ACTIONS",
    "encode_body", "encode_tx", "sign_body", "sign_fields", "sign_fields_tx", "decode_tx", "verify_tx", "tx_hash",
    "body_digest", "signable_body", "sign_bodies", "signature_ok",
]

TX_DOMAIN = b"radchain/tx/v1\x00"
TX_BATCH_DOMAIN = b"radchain/txbatch/v1\x00"  # differs from TX_DOMAIN within its length: no message is both
# A batch's audit path has at most 8 hashes (256 B); the proof's two u16 make 260 B at most.
MAX_SIGN_BATCH = 256
_PROOF_HEAD = struct.Struct(">HH")  # index, size
TX_VERSION = 1
# A tx is one audit record, not a payload: 16 KiB holds 256 instance tokens with room to spare. Larger
# studies are recorded with counts (n_series / n_instances) and a content digest instead of every token.
MAX_TX_BYTES = 16 * 1024
# The longest body that still fits MAX_TX_BYTES with the longest proof: outer array and headers (1 + 3 + 2
# + 64 + 3) and the proof (4 + 8 x 32).
_MAX_BATCHED_BODY = MAX_TX_BYTES - 73 - 260
MAX_LIST = 256
TOKEN_BYTES = 16  # pseudonym tokens: HMAC-SHA256 truncated to 128 bits (docs/PSEUDONYMS.md)
MAX_EVIDENCE_BYTES = 4096

# HL7 v3 PurposeOfUse (2.16.840.1.113883.1.11.20448), the codes in the value set's expansion.
PURPOSES = frozenset({
    "TREAT", "ETREAT", "BTG", "ERTREAT", "CLINTRL", "COC", "POPHLTH", "HPAYMT", "CLMATTCH", "COVAUTH",
    "COVERAGE", "ELIGDET", "ELIGVER", "ENROLLM", "MILDCRG", "REMITADV", "HOPERAT", "CAREMGT", "DONAT",
    "FRAUD", "GOV", "HACCRED", "HCOMPL", "HDECD", "HDIRECT", "HDM", "HLEGAL", "HOUTCOMS", "HPRGRP",
    "HQUALIMP", "HSYSADMIN", "LABELING", "METAMGT", "MEMADMIN", "MILCDM", "PATADMIN", "PATSFTY", "PERFMSR",
    "RECORDMGT", "SYSDEV", "HTEST", "TRAIN", "HMARKT", "HRESCH", "BIORCH", "CLINTRCH", "CLINTRCHNPC",
    "CLINTRCHPC", "PRECLINTRCH", "DSRCH", "POARCH", "TRANSRCH", "PATRQT", "FAMRQT", "PWATRNY", "SUPNWK",
    "PUBHLTH", "DISASTER", "THREAT",
})


class TxError(ValueError):
    """The bytes are not a well-formed, canonical, correctly signed RadChain transaction.

    Every message starts with the name of what is wrong (a field name, or ``tx``, ``body``, ``sig``,
    ``signature``) followed by ``": "``; ``field`` is that name, for answers that must name the field.
    """

    @property
    def field(self) -> str:
        return str(self).partition(": ")[0]


# ---------------------------------------------------------------------------------------------- schema
# Each field: (python type, min, max, choices, list item check, description). For str/bytes/list min..max
# bounds the length, for int the value (inclusive); ``choices`` (a frozenset) restricts str/int values;
# lists are checked item by item. One flat spec instead of a predicate per field keeps the decoder's
# per-field cost to a few comparisons (this loop runs for every field of every tx the chain sees).

def _tokens(items) -> bool:
    for t in items:
        if type(t) is not bytes or len(t) != TOKEN_BYTES:
            return False
    return True


def _oprf_counts(items) -> bool:
    """[[requesting member, points answered, points refused], ...]: names distinct, counts 0..2^32-1."""
    names = set()
    for item in items:
        if type(item) is not list or len(item) != 3:
            return False
        name, answered, refused = item
        if type(name) is not str or not 0 < len(name) <= 64 or name in names:
            return False
        if type(answered) is not int or type(refused) is not int:
            return False
        if not (0 <= answered < 1 << 32 and 0 <= refused < 1 << 32) or answered + refused == 0:
            return False
        names.add(name)
    return True


def _points(items) -> bool:
    return all(type(p) is bytes and len(p) == 32 for p in items)


def _boxes(items) -> bool:
    return all(type(b) is bytes and len(b) == 80 for b in items)  # SealedBox of a 32-byte scalar


MAX_PSK_BOXES = 64  # a PSK rotation seals one 80-byte box per member; 64 of them fit in MAX_TX_BYTES


def _psk_boxes(items) -> bool:
    """[[member name, member key 32, sealed box 80], ...]: names and keys distinct (node.ledger.epochs)."""
    names, keys = set(), set()
    for item in items:
        if type(item) is not list or len(item) != 3:
            return False
        name, key, box = item
        if type(name) is not str or not 0 < len(name) <= 64 or name in names:
            return False
        if type(key) is not bytes or len(key) != 32 or key in keys or type(box) is not bytes or len(box) != 80:
            return False
        names.add(name)
        keys.add(key)
    return True


def _evidence(items) -> bool:
    return (items[0] != items[1] and type(items[0]) is bytes and type(items[1]) is bytes
            and 0 < len(items[0]) <= MAX_EVIDENCE_BYTES and 0 < len(items[1]) <= MAX_EVIDENCE_BYTES)


def _project(code) -> bool:
    try:
        check_project_code(code)
    except CodeError:
        return False
    return True


_U63 = (1 << 63) - 1
_TOKEN = (bytes, TOKEN_BYTES, TOKEN_BYTES, None, None, f"a {TOKEN_BYTES}-byte token")
_DIGEST = (bytes, 32, 32, None, None, "a 32-byte SHA-256 digest")
_KEY = (bytes, 32, 32, None, None, "a 32-byte ed25519 public key")
_AE = (str, 1, 16, None, None, "an AE title of 1..16 characters")  # DICOM AE titles are at most 16 chars
_COUNT = (int, 0, (1 << 32) - 1, None, None, "a non-negative 32-bit count")
_TIME = (int, 0, _U63, None, None, "a non-negative integer of milliseconds since the epoch")
_NAME = (str, 1, 64, None, None, "a name of 1..64 characters")
_TEXT = (str, 1, 128, None, None, "1..128 characters")
_TOKENS = (list, 1, MAX_LIST, None, _tokens, f"a list of 1..{MAX_LIST} {TOKEN_BYTES}-byte tokens")

FIELD_SPECS: dict[str, tuple] = {
    "v": (int, TX_VERSION, TX_VERSION, None, None, f"the integer {TX_VERSION}"),
    "chain": (str, 1, 64, None, None, "a chain id of 1..64 characters"),
    "type": (str, 1, 64, None, None, "a transaction type"),  # the type itself is looked up first
    "member": _NAME, "client": _KEY, "ts": _TIME,
    "nonce": (bytes, 8, 32, None, None, "8..32 bytes"),
    "user": _TOKEN, "ae": _AE, "peer_ae": _AE, "patient": _TOKEN, "study": _TOKEN,
    "series": _TOKENS, "instances": _TOKENS, "n_series": _COUNT, "n_instances": _COUNT,
    "digest": _DIGEST, "pixel_digest": _DIGEST, "source_digest": _DIGEST, "derived_digest": _DIGEST,
    "purpose": (str, 1, 16, PURPOSES, None, "an HL7 PurposeOfUse code"),
    "outcome": (int, 0, 12, OUTCOMES, None, "one of 0, 4, 8, 12"),
    "action": (str, 1, 1, ACTIONS, None, "one of C, R, U, D, E"),
    # grantee: a consortium pseudonym token (issue 13: no free text naming people on chain); a research
    # consent names its project in `project`, which is what node.ledger.research matches (issue 14)
    "grantee": _TOKEN, "expires": _TIME,
    # consent and project scopes are codes (node.vocabulary), never free text
    "scope": (str, 1, 16, SCOPES, None, "a scope code: ALL, IMG, IMG-<modality> or RPT"),
    "project": (str, 1, 32, None, _project, "a project code of 1..32 characters A-Z 0-9 . _ -"),
    "date_from": (int, 19000101, 29991231, None, None, "a date as the integer YYYYMMDD"),
    "date_to": (int, 19000101, 29991231, None, None, "a date as the integer YYYYMMDD"),
    "waiver": (int, 0, 1, None, None, "0 or 1 (1: the ethics board waived individual consent)"),
    "subject": _NAME, "subject_key": _KEY,
    # a joining member's libp2p identity and dial address (node.ledger.epochs): what the consensus set needs
    "peer_id": (str, 1, 128, None, None, "a libp2p peer ID of 1..128 characters"),
    "addr": (str, 1, 256, None, None, "a multiaddr of 1..256 characters"),
    "param": (str, 1, 32, None, None, "a consortium parameter name of 1..32 characters"),
    "value": (int, 0, _U63, None, None, "a non-negative integer parameter value"),
    "offender": (int, 0, (1 << 16) - 1, None, None, "a member index"),
    "evidence": (list, 2, 2, None, _evidence, f"two different messages of 1..{MAX_EVIDENCE_BYTES} bytes"),
    # non-identifying imaging categories for prior-imaging lookups (node.vocabulary)
    "modality": (str, 1, 16, None, None, "a DICOM Modality code string of 1..16 characters"),
    "body_part": (str, 1, 16, None, None, "a DICOM Body Part Examined code string of 1..16 characters"),
    "study_date": (int, 19000101, 29991231, None, None, "a study date as the integer YYYYMMDD"),
    # pseudonym evaluations a member answered/refused per requesting member since its previous record
    "oprf_counts": (list, 1, MAX_LIST, None, _oprf_counts,
                    "a list of [member, points answered, points refused] with distinct members"),
    "period_ms": (int, 1, _U63, None, None, "a positive number of milliseconds"),
    # the OPRF key's resharing / DKG flow (node.ledger.oprf_reshare): which step, for which key epoch and
    # which governance epoch (its start height), Feldman commitments, shares sealed to each new member
    "oprf_kind": (str, 1, 16, frozenset({"public", "reshare", "dkg", "complaint", "justify", "ack"}), None,
                  "one of public, reshare, dkg, complaint, justify, ack"),
    "oprf_epoch": (int, 1, (1 << 16) - 1, None, None, "a key epoch 1..65535"),
    "epoch_start": (int, 1, _U63, None, None, "the start height of a governance epoch"),
    "commitments": (list, 1, 64, None, _points, "a list of 1..64 32-byte group elements"),
    "boxes": (list, 1, MAX_LIST, None, _boxes, "a list of 1..256 sealed 80-byte shares"),
    "share": (bytes, 32, 32, None, None, "a 32-byte scalar"),
    "oprf_public": (bytes, 1, 12 * 1024, None, None, "encoded epoch public parameters of at most 12 KiB"),
    # a consortium PSK rotation: the commitment to the new PSK and the PSK sealed to each member
    "psk_commit": (bytes, 32, 32, None, None, "a 32-byte PSK commitment"),
    "psk_boxes": (list, 1, MAX_PSK_BOXES, None, _psk_boxes,
                  f"a list of 1..{MAX_PSK_BOXES} [member, 32-byte member key, 80-byte sealed box], distinct"),
}

COMMON_REQUIRED = frozenset({"v", "chain", "type", "member", "client", "ts", "nonce"})
_AUDIT_OPTIONAL = frozenset({"user", "ae", "peer_ae", "series", "instances", "n_series", "n_instances",
                             "digest", "pixel_digest", "study", "modality", "body_part", "study_date"})

MEMBERSHIP_TYPES = ("member.added", "member.removed", "client.added", "client.removed", "member.key_rotated",
                    "params.changed")
# research projects (a sponsor registers, data holders approve) and the quorum path for consent changes
RESEARCH_TYPES = ("research.project.registered", "research.project.approved", "consent.vote")
EVIDENCE_TYPES = ("evidence.equivocation",)
OPRF_TYPES = ("oprf.counts",)
OPRF_DEALING_TYPES = ("oprf.dealing",)
GOVERNANCE_TYPES = ("network.psk_rotated",)

# type -> (required fields beyond COMMON_REQUIRED, optional fields)
_SCHEMA: dict[str, tuple[frozenset, frozenset]] = {}
for _t in AUDIT_TYPES:
    _req = {"patient", "purpose", "outcome", "action"}
    if _t != "query":  # a query names a patient, not necessarily one study (PS3.15 A.5.3.10)
        _req.add("study")
    _opt = set(_AUDIT_OPTIONAL) - _req
    if _t == "deidentified":
        _req |= {"source_digest", "derived_digest"}
    if _t in ("export", "deidentified"):
        _opt.add("project")  # a research release names its project (node.ledger.state's export gate)
    _SCHEMA[_t] = (frozenset(_req), frozenset(_opt))
# project: the research project a consent is for (its code; node.ledger.research matches it, so the
# grantee itself may become a token)
_CONSENT_OPTIONAL = frozenset({"user", "ae", "study", "expires", "outcome", "action", "project"})
_SCHEMA["consent.granted"] = (frozenset({"patient", "grantee", "scope", "purpose"}), _CONSENT_OPTIONAL)
_SCHEMA["consent.revoked"] = (frozenset({"patient", "grantee", "scope"}), _CONSENT_OPTIONAL | {"purpose"})
_SCHEMA["research.access.granted"] = (frozenset({"patient", "grantee", "scope", "purpose"}), _CONSENT_OPTIONAL)
_SCHEMA["member.added"] = (frozenset({"subject", "subject_key"}), frozenset({"peer_id", "addr"}))
_SCHEMA["member.removed"] = (frozenset({"subject"}), frozenset())
# a member replaces its own signing key (and/or its libp2p identity and address): node.ledger.epochs
_SCHEMA["member.key_rotated"] = (frozenset({"subject_key"}), frozenset({"peer_id", "addr"}))
# a vote to set a consortium parameter (genesis "params") from an epoch boundary on: node.ledger.epochs
_SCHEMA["params.changed"] = (frozenset({"param", "value"}), frozenset())
_SCHEMA["client.added"] = (frozenset({"subject_key"}), frozenset())
_SCHEMA["client.removed"] = (frozenset({"subject_key"}), frozenset())
_SCHEMA["evidence.equivocation"] = (frozenset({"offender", "evidence"}), frozenset())
# a project: its code, the SHA-256 of its ethics approval (digest), purpose, data scope, expiry
_SCHEMA["research.project.registered"] = (frozenset({"project", "digest", "purpose", "scope", "expires"}),
                                          frozenset({"modality", "body_part", "date_from", "date_to", "waiver"}))
_SCHEMA["research.project.approved"] = (frozenset({"project"}), frozenset())
# a member's vote for a consent change it may not make alone (action C: grant, D: revoke)
_SCHEMA["consent.vote"] = (frozenset({"patient", "grantee", "scope", "action"}),
                           frozenset({"purpose", "expires", "project"}))
# A member's periodic record of the threshold-OPRF evaluations it answered for each other member (issue 13).
_SCHEMA["oprf.counts"] = (frozenset({"oprf_counts", "period_ms"}), frozenset())
# A step of the OPRF key's resharing or dealer-free generation (node.ledger.oprf_reshare checks the fields
# of each kind; a tx whose fields do not fit its kind is on chain but ignored by the flow).
_SCHEMA["oprf.dealing"] = (frozenset({"oprf_kind", "oprf_epoch", "epoch_start"}),
                           frozenset({"commitments", "boxes", "subject", "share", "oprf_public"}))
# A vote to rotate the consortium PSK (issue 12): the proposal carries the boxes, approvals may omit them.
_SCHEMA["network.psk_rotated"] = (frozenset({"psk_commit"}), frozenset({"psk_boxes"}))
del _t, _req, _opt

TX_TYPES = frozenset(_SCHEMA)
# Every tx type, in the order the store numbers them for its (member, type) index (code = position + 1,
# on disk): append new types at the end only (tests/ledger/test_chain.py pins the codes).
TX_TYPE_ORDER = (AUDIT_TYPES + CONSENT_TYPES + MEMBERSHIP_TYPES[:4] + EVIDENCE_TYPES + RESEARCH_TYPES
                 + MEMBERSHIP_TYPES[4:] + OPRF_TYPES + GOVERNANCE_TYPES + OPRF_DEALING_TYPES)
assert frozenset(TX_TYPE_ORDER) == TX_TYPES and len(TX_TYPE_ORDER) == len(TX_TYPES)
# type -> ({allowed field: spec}, required fields, needs an actor), precomputed for the decoder's hot loop
_TYPE_SPECS = {t: ({k: FIELD_SPECS[k] for k in COMMON_REQUIRED | req | opt}, COMMON_REQUIRED | req,
                   t in AUDIT_TYPES)
               for t, (req, opt) in _SCHEMA.items()}


def schema(tx_type: str) -> tuple[frozenset, frozenset]:
    """(required, optional) field names of a tx type, common fields included in required."""
    specs, required, _actor = _TYPE_SPECS[tx_type]
    return required, frozenset(specs) - required


# ---------------------------------------------------------------------------------------------- objects

@dataclass(slots=True, eq=False)
class Tx:
    """A decoded transaction. ``raw`` is the wire form, ``hash`` = sha256(raw), ``fields`` the body map,
    ``proof`` the batch proof (b"" for a tx signed alone)."""

    raw: bytes
    hash: bytes
    body: bytes
    sig: bytes
    fields: dict
    proof: bytes = b""

    @property
    def batch_size(self) -> int:
        """How many txs share this tx's signature (1: signed alone). Read from the proof, unchecked: the
        signature check (decode_tx, verify_tx) is what refuses a proof that does not hold."""
        return int.from_bytes(self.proof[2:4], "big") if self.proof else 1

    @property
    def type(self) -> str:
        return self.fields["type"]

    @property
    def member(self) -> str:
        return self.fields["member"]

    @property
    def client(self) -> bytes:
        return self.fields["client"]

    @property
    def ts(self) -> int:
        return self.fields["ts"]

    def verify(self) -> None:
        """Raise TxError unless ``sig`` is the client key's signature over the body (or its batch's root)."""
        verify_tx(self.body, self.sig, self.fields["client"], self.proof)


_packb = msgpack.Packer(use_bin_type=True).pack
_unpackb = msgpack.unpackb
_sha256 = hashlib.sha256


def tx_hash(raw: bytes) -> bytes:
    return _sha256(raw).digest()


def encode_body(fields: dict) -> bytes:
    """Canonical body bytes for a complete field map (keys sorted). Raises TxError if invalid."""
    body = _packb({k: fields[k] for k in sorted(fields)})
    _check_fields(_decode_body(body), "body")
    return body


def encode_tx(body: bytes, sig: bytes, proof: bytes = b"") -> bytes:
    return _packb([body, sig, proof] if proof else [body, sig])


def body_digest(body: bytes) -> bytes:
    """What a batch's Merkle tree holds for a tx, and how a member finds its own tx by its fields."""
    return _sha256(body).digest()


def sign_body(body: bytes, signing_key: SigningKey) -> bytes:
    return signing_key.sign(TX_DOMAIN + body).signature


def sign_fields(fields: dict, signing_key: SigningKey) -> bytes:
    """Wire bytes of ``fields`` signed by ``signing_key``; ``client`` and ``v`` are filled in if absent."""
    return sign_fields_tx(fields, signing_key).raw


def sign_fields_tx(fields: dict, signing_key: SigningKey) -> Tx:
    """sign_fields, returned as the decoded Tx (what decode_tx of its wire bytes gives): a node admitting
    the tx it just signed skips decoding its own bytes again. Raises TxError if the fields are invalid."""
    return sign_bodies([signable_body(fields, signing_key)], signing_key)[0]


def signable_body(fields: dict, signing_key: SigningKey) -> tuple[bytes, dict]:
    """(canonical body, the fields as every verifier decodes them) for signing with ``signing_key``;
    ``client`` and ``v`` are filled in if absent. Raises TxError if the fields are invalid."""
    fields = dict(fields)
    client = bytes(signing_key.verify_key)
    if fields.setdefault("client", client) != client:
        raise TxError("client: does not match the signing key")
    fields.setdefault("v", TX_VERSION)
    body = _packb({k: fields[k] for k in sorted(fields)})
    decoded = _decode_body(body)  # the fields as every verifier sees them (types as msgpack gives them)
    _check_fields(decoded, "body")
    return body, decoded


def sign_bodies(bodies: list[tuple[bytes, dict]], signing_key: SigningKey, most: int = MAX_SIGN_BATCH) -> list[Tx]:
    """Sign signable_body results as one batch: one signature over the Merkle root of their digests, each
    tx carrying its audit path (the module docstring). More than ``most`` (at most MAX_SIGN_BATCH) are
    split into batches of as even a size as can be; a batch of one is signed alone."""
    assert 1 <= most <= MAX_SIGN_BATCH
    client = bytes(signing_key.verify_key)
    for _body, fields in bodies:
        if fields["client"] != client:  # signable_body for another key (the member rotated its key since)
            raise TxError("client: does not match the signing key")
    if any(len(body) > _MAX_BATCHED_BODY for body, _fields in bodies):
        # too long to carry a proof within MAX_TX_BYTES (no event comes near): those go alone, in place
        alone: list = [None] * len(bodies)
        small = [i for i, (body, _f) in enumerate(bodies) if len(body) <= _MAX_BATCHED_BODY]
        for i, tx in zip(small, sign_bodies([bodies[i] for i in small], signing_key, most), strict=True):
            alone[i] = tx
        for i, (body, fields) in enumerate(bodies):
            if alone[i] is None:
                alone[i] = _sign_alone(body, fields, signing_key)
        return alone
    out: list[Tx] = []
    parts = -(-len(bodies) // most)  # ceil: 17 bodies at most 16 are batches of 9 and 8, not 16 and 1
    for k in range(parts):
        part = bodies[k * len(bodies) // parts:(k + 1) * len(bodies) // parts]
        if len(part) == 1:
            out.append(_sign_alone(*part[0], signing_key))
            continue
        levels = merkle_levels([_sha256(body).digest() for body, _fields in part])
        size = len(part)
        signed_size = size.to_bytes(2, "big")
        sig = signing_key.sign(TX_BATCH_DOMAIN + signed_size + levels[-1][0]).signature
        _remember_batch(client + sig + signed_size + levels[-1][0])  # our own signature: no need to check it
        for index, (body, fields) in enumerate(part):
            proof = _PROOF_HEAD.pack(index, size) + b"".join(inclusion_path(levels, index))
            raw = encode_tx(body, sig, proof)
            out.append(Tx(raw, _sha256(raw).digest(), body, sig, fields, proof))
    return out


def _sign_alone(body: bytes, fields: dict, signing_key: SigningKey) -> Tx:
    sig = sign_body(body, signing_key)
    raw = encode_tx(body, sig)
    return Tx(raw, _sha256(raw).digest(), body, sig, fields)


_tls = threading.local()
_OPEN_BUFFER = MAX_TX_BYTES + len(TX_DOMAIN) + 64


def _sign_open(signed: bytes, client: bytes) -> bool:
    """libsodium crypto_sign_open, returning whether the signature verifies (output discarded)."""
    if _lib is None:
        try:
            crypto_sign_open(signed, client)
        except (BadSignatureError, ValueError):
            return False
        return True
    if len(client) != 32 or not 64 <= len(signed) <= _OPEN_BUFFER:
        return False
    try:
        out, out_len = _tls.buffers
    except AttributeError:  # one output buffer per thread: the cffi call releases the GIL
        out, out_len = _tls.buffers = (_ffi.new("unsigned char[]", _OPEN_BUFFER),
                                       _ffi.new("unsigned long long *"))
    return _lib.crypto_sign_open(out, out_len, signed, len(signed), client) == 0


def verify_tx(body: bytes, sig: bytes, client: bytes, proof: bytes = b"") -> None:
    if not signature_ok(body, sig, client, proof):
        raise TxError("signature: does not verify under the client key")


# (client key, signature, size, root) of batch signatures that verified: the batch's other txs need only
# their audit path. Keyed by the exact signed message and key, so an entry can vouch for nothing else.
# Shared by the event loop and the worker threads that check gossip (node.ledger.sigbatch).
_BATCHES_OK: OrderedDict[bytes, None] = OrderedDict()  # O(1) oldest-out (node.runtime.own_txs says why)
_BATCHES_LOCK = threading.Lock()
_MAX_BATCHES_OK = 16_384  # ~2 MB; a member's batches of its last few seconds are what matters


def _remember_batch(key: bytes) -> None:
    with _BATCHES_LOCK:
        _BATCHES_OK[key] = None
        if len(_BATCHES_OK) > _MAX_BATCHES_OK:
            _BATCHES_OK.popitem(last=False)


def signature_ok(body: bytes, sig: bytes, client: bytes, proof: bytes = b"") -> bool:
    """Whether ``sig`` (with ``proof`` for a tx signed in a batch) is the client key's signature of ``body``."""
    if len(sig) != 64:
        return False
    if not proof:
        return _sign_open(sig + TX_DOMAIN + body, client)
    if len(proof) < 4 or (len(proof) - 4) % 32:
        return False
    index, size = _PROOF_HEAD.unpack_from(proof)
    if not 2 <= size <= MAX_SIGN_BATCH:
        return False
    path = [proof[i:i + 32] for i in range(4, len(proof), 32)]
    root = root_from_path(_sha256(body).digest(), index, size, path)  # None unless index < size, path exact
    if root is None:
        return False
    key = client + sig + proof[2:4] + root
    if key in _BATCHES_OK:
        return True
    if not _sign_open(sig + TX_BATCH_DOMAIN + proof[2:4] + root, client):
        return False
    _remember_batch(key)
    return True


# ---------------------------------------------------------------------------------------------- decoder

# msgpack's defaults for unpackb() bound every length by the input's size (at most MAX_TX_BYTES), but a
# 16 KiB body of one-byte items is still a 16,000-entry map or array allocated before any check. The
# explicit container limits in decode_tx and _decode_body refuse anything larger than the schema allows
# before allocating it (~0.1 us per call; str and bin stay bounded by the input size). Nesting is bounded by msgpack's own stack (deeper input raises StackError, a ValueError).
# strict_map_key (the default) still admits bin keys next to str keys: _check_fields_slowly type-checks
# every key before comparing it. str/bin kept apart (raw=False) is a msgpack >= 1.0 default.
if msgpack.version < (1, 0, 0):  # pragma: no cover
    raise ImportError("node.ledger.tx needs msgpack >= 1.0")

_MAX_FIELDS = len(FIELD_SPECS)


def _decode_body(body: bytes) -> dict:
    try:
        fields = _unpackb(body, max_array_len=MAX_LIST, max_map_len=_MAX_FIELDS, max_ext_len=0)
    except Exception as exc:  # msgpack raises several types (ValueError, ExtraData, FormatError, ...)
        raise TxError(f"body: not a single msgpack value ({exc.__class__.__name__}: {exc})") from exc
    if type(fields) is not dict:
        raise TxError("body: must be a msgpack map")
    return fields


def _check_fields(fields: dict, where: str) -> None:
    """Raise TxError unless ``fields`` has exactly the fields of its type, each valid, keys in sorted order.

    Txs come in few shapes (type + ordered key list). The first tx of a shape goes through the
    field-by-field check; its shape is then remembered with the per-position value checks, so later txs
    of that shape only check values (key set, order, required fields and actor are properties of the
    shape). Any failure is re-checked field by field for an error message that names the field.
    """
    try:
        plan = _PLANS.get((fields.get("type"), *fields))
    except TypeError:  # unhashable type value
        plan = None
    if plan is None:
        _check_fields_slowly(fields, where)
        if len(_PLANS) < _MAX_PLANS:
            _PLANS[(fields["type"], *fields)] = tuple(_VALUE_CHECKS[k] for k in fields)
        return
    for (pytype, lo, hi, extra), value in zip(plan, fields.values(), strict=False):  # same shape: same length
        if type(value) is not pytype:
            break
        if pytype is int:
            if not lo <= value <= hi:
                break
        elif not lo <= len(value) <= hi:
            break
        if extra is not None and not (value in extra if type(extra) is frozenset else extra(value)):
            break
    else:
        return
    _check_fields_slowly(fields, where)
    raise TxError(f"{where}: invalid field values")  # pragma: no cover - the slow check raises first


# Shapes are ordered subsets of a fixed schema, so few occur; the bound only guards memory.
_MAX_PLANS = 4096
_PLANS: dict[tuple, tuple] = {}
_VALUE_CHECKS = {k: (t, lo, hi, choices if choices is not None else items)
                 for k, (t, lo, hi, choices, items, _desc) in FIELD_SPECS.items()}


def _show(value) -> str:
    """A short printable form of a peer's value for an error message (never the whole 16 KiB)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_fields_slowly(fields: dict, where: str) -> None:
    """Field by field: raise TxError naming the first problem (unknown/misplaced/invalid/missing field)."""
    tx_type = fields.get("type")
    try:
        specs, required, needs_actor = _TYPE_SPECS[tx_type]
    except (KeyError, TypeError):
        raise TxError(f"type: unknown transaction type {_show(tx_type)}") from None
    prev = ""
    for key, value in fields.items():
        if type(key) is not str:  # msgpack admits bin keys; comparing one with a str raises TypeError
            raise TxError(f"{_show(key)}: field names must be strings")
        if key <= prev:
            raise TxError(f"{where}: keys are not in canonical (sorted) order")
        prev = key
        spec = specs.get(key)
        if spec is None:
            if key in FIELD_SPECS:
                raise TxError(f"{key}: not a field of {tx_type}")
            raise TxError(f"{key[:40]}: unknown field")
        pytype, lo, hi, choices, items, _desc = spec
        vt = type(value)
        if vt is not pytype:
            raise TxError(f"{key}: must be {spec[5]}")
        if not lo <= (value if vt is int else len(value)) <= hi or (
                choices is not None and value not in choices) or (items is not None and not items(value)):
            raise TxError(f"{key}: must be {spec[5]}")
    if len(fields) < len(required) or not required.issubset(fields):
        raise TxError(f"{', '.join(sorted(required - fields.keys()))}: required for {tx_type}")
    if needs_actor and "user" not in fields and "ae" not in fields:
        raise TxError("user, ae: an audit event needs an actor (user token and/or AE title)")


def decode_tx(raw: bytes, *, verify: bool = True, hash: bytes | None = None) -> Tx:
    """Decode wire bytes into a Tx, refusing anything not canonical; verify the signature unless told not to.

    ``hash`` may pass sha256(raw) when the caller already computed it.
    """
    if type(raw) is not bytes:
        raw = bytes(raw)
    if len(raw) > MAX_TX_BYTES:
        raise TxError(f"tx: {len(raw)} bytes, limit {MAX_TX_BYTES}")
    try:
        outer = _unpackb(raw, max_array_len=3, max_map_len=0)
    except Exception as exc:
        raise TxError(f"tx: not a single msgpack value ({exc.__class__.__name__}: {exc})") from exc
    if type(outer) is not list or not 2 <= len(outer) <= 3 or any(type(x) is not bytes for x in outer):
        raise TxError("tx: must be a msgpack array [body: bin, sig: bin] or [body: bin, sig: bin, proof: bin]")
    body, sig = outer[0], outer[1]
    proof = outer[2] if len(outer) == 3 else b""
    if len(sig) != 64:
        raise TxError("sig: must be 64 bytes")
    # The shortest encoding is the only canonical one, and any other encoding of [bin, bin(, bin)] is
    # longer: fixarray (1) + bin8/bin16 header of the body (2 or 3) + body + bin8 header of the sig (2) + 64
    # (+ bin8/bin16 header of the proof + proof).
    expected = len(body) + (69 if len(body) < 256 else 70)
    if len(outer) == 3:
        if not 4 + 32 <= len(proof) <= 4 + 32 * 8 or (len(proof) - 4) % 32:
            raise TxError("proof: must be index u16, size u16 and 1..8 32-byte hashes")
        expected += len(proof) + (2 if len(proof) < 256 else 3)
    if len(raw) != expected:
        raise TxError("tx: non-canonical encoding of the outer array")
    fields = _decode_body(body)
    _check_fields(fields, "body")  # also checks key order, so the repack below compares like with like
    if _packb(fields) != body:
        raise TxError("body: non-canonical msgpack encoding")
    if verify and not signature_ok(body, sig, fields["client"], proof):
        raise TxError("signature: does not verify under the client key")
    return Tx(raw, hash or _sha256(raw).digest(), body, sig, fields, proof)
