"""Transactions: the canonical msgpack encoding, ed25519 signatures and the strict decoder.

Wire form of a signed transaction (what is gossiped, ordered and stored)::

    msgpack array [body: bin, sig: bin(64)]

``body`` is the canonical msgpack encoding of a map of fields (below); ``sig`` is the ed25519 signature of
the ``client`` key over ``TX_DOMAIN + body``. The signature covers the body bytes exactly as sent, so a
verifier never re-encodes to check it. The tx hash is ``sha256(wire bytes)``; ed25519 signatures are
deterministic and libsodium rejects non-canonical ones, so one set of fields signed by one key has exactly
one wire form and one hash (this is what makes ``event_id`` submissions idempotent).

Canonical body: a msgpack map whose keys are strings in ascending order, integers in their shortest form,
strings as str, byte strings as bin, no nil, no float, no ext, absent optional fields omitted, each array at
most ``MAX_LIST`` items. The decoder checks this by re-encoding the decoded map and comparing bytes, so any
other encoding of the same values is refused (``TxError``), as are unknown fields, missing required fields,
values of the wrong type or size, and anything longer than ``MAX_TX_BYTES``.

Field names are part of the public contract (RPC, receipts, other implementations); see docs/LEDGER.md.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgpack
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey

__all__ = [
    "TX_DOMAIN", "TX_VERSION", "MAX_TX_BYTES", "MAX_LIST", "TOKEN_BYTES", "TxError", "Tx", "TX_TYPES",
    "AUDIT_TYPES", "CONSENT_TYPES", "MEMBERSHIP_TYPES", "PURPOSES", "OUTCOMES", "ACTIONS",
    "encode_body", "encode_tx", "sign_body", "sign_fields", "decode_tx", "verify_tx", "tx_hash",
]

TX_DOMAIN = b"radchain/tx/v1\x00"
TX_VERSION = 1
# A tx is one audit record, not a payload: 16 KiB holds 256 instance tokens with room to spare. Larger
# studies are recorded with counts (n_series / n_instances) and a content digest instead of every token.
MAX_TX_BYTES = 16 * 1024
MAX_LIST = 256
TOKEN_BYTES = 16  # pseudonym tokens: HMAC-SHA256 truncated to 128 bits (docs/PSEUDONYMS.md)
MAX_EVIDENCE_BYTES = 4096

# DICOM EventOutcomeIndicator (PS3.15 A.5.1): 0 success, 4 minor, 8 serious, 12 major failure.
OUTCOMES = frozenset({0, 4, 8, 12})
# DICOM EventActionCode: Create, Read, Update, Delete, Execute.
ACTIONS = frozenset({"C", "R", "U", "D", "E"})
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
    """The bytes are not a well-formed, canonical, correctly signed RadChain transaction."""


# ---------------------------------------------------------------------------------------------- schema

def _str_check(max_len: int):
    def check(v):
        return type(v) is str and 0 < len(v) <= max_len
    return check


def _bytes_check(*sizes: int):
    allowed = frozenset(sizes)

    def check(v):
        return type(v) is bytes and len(v) in allowed
    return check


def _uint_check(limit: int):
    def check(v):
        return type(v) is int and 0 <= v < limit
    return check


def _token_list(v):
    return (type(v) is list and 0 < len(v) <= MAX_LIST
            and all(type(t) is bytes and len(t) == TOKEN_BYTES for t in v))


def _evidence(v):
    return (type(v) is list and len(v) == 2
            and all(type(m) is bytes and 0 < len(m) <= MAX_EVIDENCE_BYTES for m in v) and v[0] != v[1])


_U63 = 1 << 63
_token = _bytes_check(TOKEN_BYTES)
_digest = _bytes_check(32)
_ae = _str_check(16)  # DICOM AE titles are at most 16 characters

# field -> (predicate, human description used in error messages)
FIELD_CHECKS: dict[str, tuple] = {
    "v": (lambda v: v == TX_VERSION and type(v) is int, f"the integer {TX_VERSION}"),
    "chain": (_str_check(64), "a chain id string of 1..64 characters"),
    "type": (lambda v: type(v) is str and v in TX_TYPES, "a known transaction type"),
    "member": (_str_check(64), "a member name of 1..64 characters"),
    "client": (_bytes_check(32), "a 32-byte ed25519 public key"),
    "ts": (_uint_check(_U63), "a non-negative integer of milliseconds since the epoch"),
    "nonce": (_bytes_check(*range(8, 33)), "8..32 bytes"),
    "user": (_token, f"a {TOKEN_BYTES}-byte user token"),
    "ae": (_ae, "an AE title of 1..16 characters"),
    "peer_ae": (_ae, "an AE title of 1..16 characters"),
    "patient": (_token, f"a {TOKEN_BYTES}-byte patient token"),
    "study": (_token, f"a {TOKEN_BYTES}-byte study token"),
    "series": (_token_list, f"a list of 1..{MAX_LIST} series tokens"),
    "instances": (_token_list, f"a list of 1..{MAX_LIST} instance tokens"),
    "n_series": (_uint_check(1 << 32), "a non-negative 32-bit count"),
    "n_instances": (_uint_check(1 << 32), "a non-negative 32-bit count"),
    "digest": (_digest, "a 32-byte SHA-256 digest"),
    "pixel_digest": (_digest, "a 32-byte SHA-256 digest"),
    "source_digest": (_digest, "a 32-byte SHA-256 digest"),
    "derived_digest": (_digest, "a 32-byte SHA-256 digest"),
    "purpose": (lambda v: type(v) is str and v in PURPOSES, "an HL7 PurposeOfUse code"),
    "outcome": (lambda v: type(v) is int and v in OUTCOMES, "one of 0, 4, 8, 12"),
    "action": (lambda v: type(v) is str and v in ACTIONS, "one of C, R, U, D, E"),
    "grantee": (_str_check(128), "a grantee of 1..128 characters"),
    "scope": (_str_check(128), "a scope of 1..128 characters"),
    "expires": (_uint_check(_U63), "milliseconds since the epoch"),
    "subject": (_str_check(64), "a member name of 1..64 characters"),
    "subject_key": (_bytes_check(32), "a 32-byte ed25519 public key"),
    "offender": (_uint_check(1 << 16), "a member index"),
    "evidence": (_evidence, f"two different messages of 1..{MAX_EVIDENCE_BYTES} bytes"),
}

COMMON_REQUIRED = frozenset({"v", "chain", "type", "member", "client", "ts", "nonce"})
_AUDIT_OPTIONAL = frozenset({"user", "ae", "peer_ae", "series", "instances", "n_series", "n_instances",
                             "digest", "pixel_digest", "study"})

AUDIT_TYPES = (
    "instances.stored", "instances.accessed", "query", "transfer.begin", "instances.transferred", "export",
    "import", "study.deleted", "deidentified",
)
CONSENT_TYPES = ("consent.granted", "consent.revoked", "research.access.granted")
MEMBERSHIP_TYPES = ("member.added", "member.removed", "client.added", "client.removed")
EVIDENCE_TYPES = ("evidence.equivocation",)

# type -> (required fields beyond COMMON_REQUIRED, optional fields)
_SCHEMA: dict[str, tuple[frozenset, frozenset]] = {}
for _t in AUDIT_TYPES:
    _req = {"patient", "purpose", "outcome", "action"}
    if _t != "query":  # a query names a patient, not necessarily one study (PS3.15 A.5.3.10)
        _req.add("study")
    _opt = set(_AUDIT_OPTIONAL) - _req
    if _t == "deidentified":
        _req |= {"source_digest", "derived_digest"}
    _SCHEMA[_t] = (frozenset(_req), frozenset(_opt))
_CONSENT_OPTIONAL = frozenset({"user", "ae", "study", "expires", "outcome", "action"})
_SCHEMA["consent.granted"] = (frozenset({"patient", "grantee", "scope", "purpose"}), _CONSENT_OPTIONAL)
_SCHEMA["consent.revoked"] = (frozenset({"patient", "grantee", "scope"}), _CONSENT_OPTIONAL | {"purpose"})
_SCHEMA["research.access.granted"] = (frozenset({"patient", "grantee", "scope", "purpose"}), _CONSENT_OPTIONAL)
_SCHEMA["member.added"] = (frozenset({"subject", "subject_key"}), frozenset())
_SCHEMA["member.removed"] = (frozenset({"subject"}), frozenset())
_SCHEMA["client.added"] = (frozenset({"subject_key"}), frozenset())
_SCHEMA["client.removed"] = (frozenset({"subject_key"}), frozenset())
_SCHEMA["evidence.equivocation"] = (frozenset({"offender", "evidence"}), frozenset())
del _t, _req, _opt

TX_TYPES = frozenset(_SCHEMA)
# type -> (all allowed keys, all required keys), precomputed for the decoder's hot loop
_ALLOWED = {t: (COMMON_REQUIRED | req | opt, COMMON_REQUIRED | req) for t, (req, opt) in _SCHEMA.items()}
_ACTOR_TYPES = frozenset(AUDIT_TYPES)


def schema(tx_type: str) -> tuple[frozenset, frozenset]:
    """(required, optional) field names of a tx type, common fields included in required."""
    allowed, required = _ALLOWED[tx_type]
    return required, allowed - required


# ---------------------------------------------------------------------------------------------- objects

@dataclass(slots=True, eq=False)
class Tx:
    """A decoded transaction. ``raw`` is the wire form, ``hash`` = sha256(raw), ``fields`` the body map."""

    raw: bytes
    hash: bytes
    body: bytes
    sig: bytes
    fields: dict

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
        """Raise TxError unless ``sig`` is the client key's signature over the body."""
        verify_tx(self.body, self.sig, self.fields["client"])


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


def encode_tx(body: bytes, sig: bytes) -> bytes:
    return _packb([body, sig])


def sign_body(body: bytes, signing_key: SigningKey) -> bytes:
    return signing_key.sign(TX_DOMAIN + body).signature


def sign_fields(fields: dict, signing_key: SigningKey) -> bytes:
    """Wire bytes of ``fields`` signed by ``signing_key``; ``client`` and ``v`` are filled in if absent."""
    fields = dict(fields)
    client = bytes(signing_key.verify_key)
    if fields.setdefault("client", client) != client:
        raise TxError("client: does not match the signing key")
    fields.setdefault("v", TX_VERSION)
    body = encode_body(fields)
    return encode_tx(body, sign_body(body, signing_key))


def verify_tx(body: bytes, sig: bytes, client: bytes) -> None:
    try:
        crypto_sign_open(sig + TX_DOMAIN + body, client)
    except (BadSignatureError, ValueError) as exc:
        raise TxError("signature: does not verify under the client key") from exc


# ---------------------------------------------------------------------------------------------- decoder

_LIMITS = dict(raw=False, strict_map_key=True, max_str_len=MAX_TX_BYTES, max_bin_len=MAX_TX_BYTES,
               max_array_len=MAX_LIST, max_map_len=64, max_ext_len=0)


def _decode_body(body: bytes) -> dict:
    try:
        fields = _unpackb(body, **_LIMITS)
    except Exception as exc:  # msgpack raises several types (ValueError, ExtraData, FormatError, ...)
        raise TxError(f"body: not a single msgpack value ({exc.__class__.__name__}: {exc})") from exc
    if type(fields) is not dict:
        raise TxError("body: must be a msgpack map")
    return fields


def _check_fields(fields: dict, where: str) -> None:
    tx_type = fields.get("type")
    try:
        allowed, required = _ALLOWED[tx_type]
    except (KeyError, TypeError):
        raise TxError(f"type: unknown transaction type {tx_type!r}") from None
    for key, value in fields.items():
        if key not in allowed:
            if key in FIELD_CHECKS:
                raise TxError(f"{key}: not a field of {tx_type}")
            raise TxError(f"{key}: unknown field")
        check, desc = FIELD_CHECKS[key]
        if not check(value):
            raise TxError(f"{key}: must be {desc}")
    if len(fields) < len(required) or not required.issubset(fields):
        raise TxError(f"{', '.join(sorted(required - fields.keys()))}: required for {tx_type}")
    if tx_type in _ACTOR_TYPES and "user" not in fields and "ae" not in fields:
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
        outer = _unpackb(raw, **_LIMITS)
    except Exception as exc:
        raise TxError(f"tx: not a single msgpack value ({exc.__class__.__name__}: {exc})") from exc
    if type(outer) is not list or len(outer) != 2 or type(outer[0]) is not bytes or type(outer[1]) is not bytes:
        raise TxError("tx: must be a msgpack array [body: bin, sig: bin]")
    body, sig = outer
    if len(sig) != 64:
        raise TxError("sig: must be 64 bytes")
    if _packb(outer) != raw:
        raise TxError("tx: non-canonical encoding of the outer array")
    fields = _decode_body(body)
    keys = list(fields)
    if keys != sorted(keys):
        raise TxError("body: keys are not in canonical (sorted) order")
    if _packb(fields) != body:
        raise TxError("body: non-canonical msgpack encoding")
    _check_fields(fields, "body")
    if verify:
        verify_tx(body, sig, fields["client"])
    return Tx(raw, hash or _sha256(raw).digest(), body, sig, fields)
