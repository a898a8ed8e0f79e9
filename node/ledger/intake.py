"""Raw events (identifiers in clear, as an integrator sends them) -> pseudonymized, signed transactions.

The raw event format is fixed in docs/CONTRACTS.md ("Raw events"). Only the hospital's own node sees a raw
event; what leaves it is the tx built here, with every identifier replaced by a keyed token.

Idempotency: with ``event_id`` the tx nonce is a keyed token of (member, event_id) and the timestamp is the
event's own ``time``, so submitting the same event twice yields the same fields, the same signature
(ed25519 is deterministic) and the same tx hash; the chain stores it once. An ``event_id`` without
``time`` is refused: a timestamp taken from the arrival clock would differ between submissions.
Without ``event_id`` the nonce is random and ``time`` defaults to ``now_ms``.
"""

from __future__ import annotations

import os
import time as _time
from datetime import datetime

from nacl.signing import SigningKey

from node.ledger.pseudonym import PseudonymError, Pseudonymizer
from node.ledger.tx import (
    AUDIT_TYPES,
    CONSENT_TYPES,
    MAX_LIST,
    OUTCOMES,
    PURPOSES,
    TX_VERSION,
    TxError,
    sign_fields,
)
from node.vocabulary import ALLOWED_ACTIONS, DEFAULT_ACTION, EVENT_TYPES, CategoryError, code_string
from node.vocabulary import study_date as categories_study_date

__all__ = ["EventError", "event_to_tx_fields", "sign_tx", "make_tx", "parse_time", "EXAMPLE_EVENT"]

# The example raw event the docs, `make testnet` and the OpenRPC document show (tests add event_id and time).
EXAMPLE_EVENT = {"type": "instances.accessed", "patient_id": "PAT-1", "issuer": "HOSP-A",
                 "study_uid": "1.2.840.1", "actor": "dr.smith", "purpose": "TREAT"}

_COMMON = {"type", "patient_id", "issuer", "actor", "actor_ae", "purpose", "event_id", "time", "outcome",
           "action", "study_uid"}
_AUDIT = _COMMON | {"peer_ae", "series_uids", "sop_instance_uids", "n_series", "n_instances", "digest",
                    "pixel_digest", "modality", "body_part", "study_date"}
_RAW_FIELDS = {t: _AUDIT for t in AUDIT_TYPES}
_RAW_FIELDS["deidentified"] = _AUDIT | {"source_digest", "derived_digest", "project"}
_RAW_FIELDS["export"] = _AUDIT | {"project"}
for _t in CONSENT_TYPES + ("consent.vote",):
    _RAW_FIELDS[_t] = _COMMON | {"grantee", "scope", "expires", "project"}
del _t
_ALL_RAW = set().union(*_RAW_FIELDS.values())


class EventError(ValueError):
    """A raw event is malformed; the message starts with the offending field's name."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def parse_time(value, field: str = "time") -> int:
    """ISO 8601 with a timezone, or integer epoch milliseconds -> epoch milliseconds."""
    if type(value) is int:
        if not 0 <= value < 1 << 63:
            raise EventError(field, "epoch milliseconds out of range")
        return value
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise EventError(field, f"not ISO 8601: {value!r}") from None
        if dt.tzinfo is None:
            raise EventError(field, "ISO 8601 time needs a timezone (Z or +hh:mm)")
        ms = int(dt.timestamp() * 1000)
        if ms < 0:
            raise EventError(field, "before 1970")
        return ms
    raise EventError(field, "must be an ISO 8601 string or integer epoch milliseconds")


def _str(event: dict, name: str, required: bool = False) -> str | None:
    value = event.get(name)
    if value is None:
        if required:
            raise EventError(name, "required")
        return None
    if not isinstance(value, str) or not value.strip():
        raise EventError(name, "must be a non-empty string")
    return value


def _hex32(event: dict, name: str) -> bytes | None:
    value = event.get(name)
    if value is None:
        return None
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise EventError(name, "must be 64 hex digits (SHA-256)")
    return raw


def _count(event: dict, name: str) -> int | None:
    value = event.get(name)
    if value is None:
        return None
    if type(value) is not int or not 0 <= value < 1 << 32:
        raise EventError(name, "must be a non-negative integer")
    return value


def _uid_list(event: dict, name: str, tokenize) -> list[bytes] | None:
    value = event.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(u, str) and u.strip("\x00 ") for u in value):
        raise EventError(name, "must be a non-empty list of UID strings")
    if len(value) > MAX_LIST:
        raise EventError(name, f"more than {MAX_LIST} UIDs; send n_series/n_instances and a digest instead")
    return [tokenize(u) for u in value]


def _ae(event: dict, name: str) -> str | None:
    value = _str(event, name)
    if value is not None:
        value = value.strip()
        if len(value) > 16 or not value.isprintable() or "\\" in value:
            raise EventError(name, "an AE title is 1..16 printable characters without backslash")
    return value


def event_to_tx_fields(event: dict, pseudonymizer: Pseudonymizer, *, chain_id: str, member: str,
                       client: bytes, now_ms: int | None = None, default_purpose: str | None = None) -> dict:
    """Turn a raw JSON event into tx fields (every identifier tokenized). Raises EventError naming the field.

    ``client`` is the public key that will sign (the member key or one of its client keys).
    ``default_purpose`` fills ``purpose`` for sources that cannot send one (e.g. the DICOM hook).
    """
    tx_type = _event_type(event)
    fields: dict = {"v": TX_VERSION, "chain": chain_id, "type": tx_type, "member": member, "client": client}
    _identifiers(event, tx_type, pseudonymizer, fields)
    _audit_codes(event, tx_type, default_purpose, fields)
    _details(event, tx_type, pseudonymizer, fields)
    _nonce_and_time(event, pseudonymizer, member, now_ms, fields)
    return fields


def _event_type(event) -> str:
    """The event's type, once the event is an object whose every field belongs to that type."""
    if not isinstance(event, dict):
        raise EventError("event", "must be a JSON object")
    tx_type = event.get("type")
    if tx_type is None:
        raise EventError("type", "required")
    if not isinstance(tx_type, str) or tx_type not in EVENT_TYPES:
        raise EventError("type", f"unknown event type {tx_type!r}; one of {', '.join(sorted(EVENT_TYPES))}")
    unknown = sorted(k for k in event if k not in _ALL_RAW)
    if unknown:
        raise EventError(unknown[0], f"unknown field(s) {', '.join(unknown)}")
    wrong = sorted(k for k in event if k not in _RAW_FIELDS[tx_type])
    if wrong:
        raise EventError(wrong[0], f"not a field of {tx_type} events")
    return tx_type


def _identifiers(event: dict, tx_type: str, pseudonymizer: Pseudonymizer, fields: dict) -> None:
    """patient, study, user, series and instances: every identifier becomes its keyed token."""
    try:
        fields["patient"] = pseudonymizer.patient(_str(event, "patient_id", True), _str(event, "issuer", True))
        study = _str(event, "study_uid", required=tx_type in AUDIT_TYPES and tx_type != "query")
        if study is not None:
            fields["study"] = pseudonymizer.study(study)
        actor = _str(event, "actor")
        actor_ae = event.get("actor_ae")
        # DICOM traffic names its actor by the calling AE title, which goes on chain in clear as `ae`: a user
        # token of the same value would only repeat it (and invite linking the token to the AE title).
        if actor is not None and not (isinstance(actor_ae, str) and actor.strip() == actor_ae.strip()):
            fields["user"] = pseudonymizer.user(actor)
        series = _uid_list(event, "series_uids", pseudonymizer.series)
        if series is not None:
            fields["series"] = series
        instances = _uid_list(event, "sop_instance_uids", pseudonymizer.instance)
        if instances is not None:
            fields["instances"] = instances
    except PseudonymError as exc:
        field = str(exc).split(":", 1)[0]
        raise EventError({"study_uid": "study_uid", "series_uid": "series_uids",
                          "sop_instance_uid": "sop_instance_uids"}.get(field, field), str(exc).split(": ", 1)[-1]) from None



def _audit_codes(event: dict, tx_type: str, default_purpose: str | None, fields: dict) -> None:
    """AE titles, purpose of use, outcome and action, each checked against the vocabulary."""
    ae = _ae(event, "actor_ae")
    if ae is not None:
        fields["ae"] = ae
    if tx_type in AUDIT_TYPES and "user" not in fields and "ae" not in fields:
        raise EventError("actor", "an audit event needs actor (user id) and/or actor_ae (AE title)")
    peer = _ae(event, "peer_ae")
    if peer is not None:
        fields["peer_ae"] = peer

    purpose = event.get("purpose", default_purpose)
    if purpose is None:
        if tx_type != "consent.revoked" and not (tx_type == "consent.vote" and event.get("action") == "D"):
            raise EventError("purpose", "required (an HL7 PurposeOfUse code such as TREAT)")
    elif not isinstance(purpose, str) or purpose not in PURPOSES:
        raise EventError("purpose", f"{purpose!r} is not an HL7 PurposeOfUse code (TREAT, ETREAT, HPAYMT, "
                                    "HOPERAT, HRESCH, PATRQT, PUBHLTH, ...)")
    else:
        fields["purpose"] = purpose

    outcome = event.get("outcome", 0)
    if type(outcome) is not int or outcome not in OUTCOMES:
        raise EventError("outcome", "must be 0 (success), 4, 8 or 12")
    if tx_type in AUDIT_TYPES or "outcome" in event:
        fields["outcome"] = outcome
    action = event.get("action", DEFAULT_ACTION[tx_type])
    if action not in ALLOWED_ACTIONS[tx_type]:
        raise EventError("action", f"{action!r} is not valid for {tx_type}: one of "
                                   f"{', '.join(sorted(ALLOWED_ACTIONS[tx_type]))}")
    if tx_type in AUDIT_TYPES or "action" in event or tx_type == "consent.vote":
        fields["action"] = action


def _details(event: dict, tx_type: str, pseudonymizer: Pseudonymizer, fields: dict) -> None:
    """Counts, digests, imaging categories, de-identification lineage and consent terms."""
    for name in ("n_series", "n_instances"):
        value = _count(event, name)
        if value is not None:
            fields[name] = value
    for name in ("digest", "pixel_digest", "source_digest", "derived_digest"):
        value = _hex32(event, name)
        if value is not None:
            fields[name] = value
    try:  # imaging categories (optional, non-identifying; node.vocabulary)
        for name in ("modality", "body_part"):
            if name in event:
                fields[name] = code_string(event[name], name)
        if "study_date" in event:
            fields["study_date"] = categories_study_date(event["study_date"])
    except CategoryError as exc:
        raise EventError(str(exc).partition(":")[0], str(exc).partition(": ")[2]) from None
    if tx_type == "deidentified":
        for name in ("source_digest", "derived_digest"):
            if name not in fields:
                raise EventError(name, "required for deidentified (lineage: original -> de-identified copy)")

    if "project" in event:
        fields["project"] = _str(event, "project")
    if tx_type in CONSENT_TYPES or tx_type == "consent.vote":
        for name in ("grantee", "scope"):
            value = _str(event, name, required=True)
            if len(value) > 128:
                raise EventError(name, "longer than 128 characters")
            fields[name] = value
        try:  # who is granted access: a person or an organisation, so a consortium token, never clear text
            fields["grantee"] = pseudonymizer.grantee(fields["grantee"])
        except PseudonymError as exc:
            raise EventError("grantee", str(exc).split(": ", 1)[-1]) from None
        if "expires" in event:
            fields["expires"] = parse_time(event["expires"], "expires")


def _nonce_and_time(event: dict, pseudonymizer: Pseudonymizer, member: str, now_ms: int | None,
                    fields: dict) -> None:
    """nonce and ts: from event_id and time (idempotent resubmission), else random and now."""
    event_id = event.get("event_id")
    if event_id is not None:
        if not isinstance(event_id, str) or not event_id or len(event_id) > 256:
            raise EventError("event_id", "must be a string of 1..256 characters")
        if "time" not in event:
            raise EventError("time", "required with event_id (the tx timestamp must come from the event, "
                                     "not from the arrival clock, for resubmission to be idempotent)")
        fields["nonce"] = pseudonymizer.event(member, event_id)
    else:
        fields["nonce"] = os.urandom(16)
    if "time" in event:
        fields["ts"] = parse_time(event["time"])
    else:
        fields["ts"] = int(_time.time() * 1000) if now_ms is None else now_ms


def sign_tx(fields: dict, signing_key: SigningKey) -> bytes:
    """Canonical wire bytes of ``fields`` signed by ``signing_key`` (member key or an authorised client key).

    Raises EventError if the fields do not form a valid tx (message names the field).
    """
    try:
        return sign_fields(fields, signing_key)
    except TxError as exc:
        raise EventError(str(exc).split(":", 1)[0], str(exc).split(": ", 1)[-1]) from None


def make_tx(tx_type: str, signing_key: SigningKey, *, chain_id: str, member: str, ts: int | None = None,
            nonce: bytes | None = None, **fields) -> bytes:
    """Build and sign a tx that does not come from a raw event (membership, evidence, tests, benchmarks)."""
    body = {"v": TX_VERSION, "chain": chain_id, "type": tx_type, "member": member,
            "client": bytes(signing_key.verify_key),
            "ts": int(_time.time() * 1000) if ts is None else ts,
            "nonce": os.urandom(16) if nonce is None else nonce, **fields}
    return sign_fields(body, signing_key)
