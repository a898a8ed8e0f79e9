"""Pseudonyms at the edge: raw DICOM identifiers become keyed tokens before anything reaches the chain.

token = HMAC-SHA256(consortium pseudonym key, "radchain/pseudonym/v<epoch>/" || kind || 0 || length-prefixed parts)[:16]

- The key is the consortium pseudonym key from HOME/config.toml; every member holds the same key so one
  patient (Patient ID + Issuer of Patient ID) gets the same token at every hospital. It is never on chain.
- Each kind of identifier has its own domain label, so a study UID and an instance UID with equal text
  never share a token, and tokens of one kind cannot be replayed as another.
- Parts are length-prefixed, so ("AB", "C") and ("A", "BC") differ.
- 128-bit tokens: collisions need ~2^64 identifiers (birthday bound) and HMAC truncated to half its output
  is a standard construction (RFC 2104 section 5); it halves index and tx size against 256 bits.
- Values are normalised the way DICOM defines equality: UIDs (VR UI) lose trailing NUL/space padding,
  Patient ID and Issuer (VR LO) lose leading and trailing spaces; case is kept.

Threat model: docs/PSEUDONYMS.md.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["Pseudonymizer", "PseudonymError", "TOKEN_BYTES", "MIN_KEY_BYTES", "normalize", "CONSORTIUM_KINDS",
           "LOCAL_KINDS", "TokenizeError"]

TOKEN_BYTES = 16
MIN_KEY_BYTES = 32


class PseudonymError(ValueError):
    """An identifier or key cannot be pseudonymized (empty, too long, wrong type, short key)."""


def _part(value: str, what: str) -> bytes:
    if not isinstance(value, str):
        raise PseudonymError(f"{what}: must be a string")
    data = value.encode("utf-8")
    if not data:
        raise PseudonymError(f"{what}: must not be empty")
    if len(data) > 1024:
        raise PseudonymError(f"{what}: longer than 1024 bytes")
    return len(data).to_bytes(2, "big") + data


def _uid(uid: str, what: str) -> bytes:
    if not isinstance(uid, str):
        raise PseudonymError(f"{what}: must be a string")
    return _part(uid.rstrip("\x00 "), what)


# Which key tokenizes which kind (docs/PSEUDONYMS.md, "Which identifiers use which key"):
# the consortium's threshold OPRF for identifiers that must link across hospitals, this hospital's own
# HMAC key (HOME/keys/local-pseudonym.key) for the rest.
CONSORTIUM_KINDS = ("patient", "study", "grantee")
LOCAL_KINDS = ("series", "instance", "user", "event")


def normalize(kind: str, *values) -> tuple[str, ...]:
    """Validated, DICOM-normalised parts of a consortium identifier (the OPRF input's parts).

    Same rules as the HMAC tokens: UIDs lose trailing NUL/space padding, LO values (Patient ID, Issuer)
    and grantees lose surrounding spaces; case is kept. Raises PseudonymError naming the field.
    """
    if kind == "patient":
        patient_id, issuer = values
        if not isinstance(patient_id, str) or not isinstance(issuer, str):
            raise PseudonymError("patient_id, issuer: must be strings")
        parts = ((patient_id.strip(), "patient_id"), (issuer.strip(), "issuer"))
    elif kind == "study":
        (uid,) = values
        if not isinstance(uid, str):
            raise PseudonymError("study_uid: must be a string")
        parts = ((uid.rstrip("\x00 "), "study_uid"),)
    elif kind == "grantee":
        (grantee,) = values
        if not isinstance(grantee, str):
            raise PseudonymError("grantee: must be a string")
        parts = ((grantee.strip(), "grantee"),)
    else:
        raise PseudonymError(f"kind: {kind!r} is not a consortium identifier kind")
    for value, what in parts:
        _part(value, what)  # the same bounds as the HMAC tokens
    return tuple(v for v, _ in parts)


def _hmac_pads(key: bytes) -> tuple:
    """SHA-256 states after the HMAC key's inner and outer padded blocks (RFC 2104, block size 64)."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\x00")
    return (hashlib.sha256(bytes(b ^ 0x36 for b in key)), hashlib.sha256(bytes(b ^ 0x5C for b in key)))


# The error of the node's consortium tokenizer (node.tokenizer): defined here, with the token rules, so the
# RPC edge can name it without importing the runtime.
class TokenizeError(Exception):
    """Consortium tokens cannot be computed now: too few members answered validly, or they refused.

    `code` is "rate_limited" (every missing answer was a rate-limit refusal; `retry_after` seconds),
    "no_key" (this node holds no epoch key) or "unavailable"."""

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code, self.retry_after = code, retry_after


class Pseudonymizer:
    """Keyed tokens for patients, studies, series, instances, users and event ids."""

    __slots__ = ("_key", "_domain", "key_id", "version", "_inner", "_outer")

    def __init__(self, key: bytes, version: int = 1):
        """``version`` is the key epoch: a key rotation bumps it so old and new tokens never collide."""
        if not isinstance(key, bytes | bytearray) or len(key) < MIN_KEY_BYTES:
            raise PseudonymError(f"pseudonym key: need at least {MIN_KEY_BYTES} random bytes")
        if type(version) is not int or version < 1:
            raise PseudonymError("pseudonym key version: must be a positive integer")
        self._key = bytes(key)
        self.version = version
        self._domain = b"radchain/pseudonym/v%d/" % version
        # Public fingerprint of the key, to tell which key a deployment uses without revealing it.
        self.key_id = hmac.new(self._key, self._domain + b"key-id", hashlib.sha256).hexdigest()[:16]
        self._inner, self._outer = _hmac_pads(self._key)

    def __repr__(self) -> str:  # never print the key
        return f"Pseudonymizer(key_id={self.key_id}, version={self.version})"

    def _token(self, kind: bytes, *parts: bytes) -> bytes:
        msg = self._domain + kind + b"\x00" + b"".join(parts)
        # HMAC-SHA256(key, msg) from the key's two padded blocks hashed once (RFC 2104): the same bytes as
        # hmac.new(key, msg, sha256).digest() at a third of its cost (two or more tokens per event)
        inner = self._inner.copy()
        inner.update(msg)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:TOKEN_BYTES]

    def patient(self, patient_id: str, issuer: str) -> bytes:
        """Patient ID (0010,0020) qualified by Issuer of Patient ID (0010,0021): IDs are only unique per issuer."""
        if not isinstance(patient_id, str) or not isinstance(issuer, str):
            raise PseudonymError("patient_id, issuer: must be strings")
        return self._token(b"patient", _part(patient_id.strip(), "patient_id"), _part(issuer.strip(), "issuer"))

    def study(self, uid: str) -> bytes:
        return self._token(b"study", _uid(uid, "study_uid"))

    def series(self, uid: str) -> bytes:
        return self._token(b"series", _uid(uid, "series_uid"))

    def instance(self, uid: str) -> bytes:
        return self._token(b"instance", _uid(uid, "sop_instance_uid"))

    def user(self, user_id: str) -> bytes:
        return self._token(b"user", _part(user_id.strip() if isinstance(user_id, str) else user_id, "actor"))

    def grantee(self, grantee: str) -> bytes:
        """Offline/tests only: a node tokenizes grantees with the consortium OPRF (node.tokenizer)."""
        return self._token(b"grantee", _part(grantee.strip() if isinstance(grantee, str) else grantee, "grantee"))

    def event(self, member: str, event_id: str) -> bytes:
        """Nonce for an idempotent event: the source's event id, scoped to the submitting member."""
        return self._token(b"event", _part(member, "member"), _part(event_id, "event_id"))
