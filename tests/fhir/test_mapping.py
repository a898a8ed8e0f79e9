"""Every tx type maps to a valid FHIR R4 AuditEvent (fhir.resources R4B models), with only its required
fields and with every optional field set, and no field value is lost or invented."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from node.fhir.mapping import TYPE_EVENT, audit_event
from node.ledger.tx import TX_TYPES, schema

VALUES = {
    "v": 1, "chain": "radchain-test", "member": "hosp-a", "client": b"\x01" * 32, "ts": 1_795_773_600_123,
    "nonce": b"\x02" * 16, "user": b"\x03" * 16, "ae": "VIEWER01", "peer_ae": "MODALITY", "patient": b"\x04" * 16,
    "study": b"\x05" * 16, "series": [b"\x06" * 16], "instances": [b"\x07" * 16], "n_series": 1,
    "n_instances": 12, "digest": b"\x08" * 32, "pixel_digest": b"\x09" * 32, "source_digest": b"\x0a" * 32,
    "derived_digest": b"\x0b" * 32, "purpose": "TREAT", "outcome": 4, "action": "R", "grantee": b"\x0d" * 16,
    "scope": "IMG", "expires": 1_800_000_000_000, "subject": "hosp-e", "subject_key": b"\x0c" * 32,
    "offender": 2, "evidence": [b"a", b"b"], "modality": "CT", "body_part": "HEAD", "study_date": 20261102,
    "oprf_counts": [["hosp-b", 40, 2]], "period_ms": 60_000,
    "oprf_kind": "reshare", "oprf_epoch": 1, "epoch_start": 17, "commitments": [b"\x0e" * 32],
    "boxes": [b"\x0f" * 80], "share": b"\x10" * 32, "oprf_public": b"\x11" * 40,
    "psk_commit": b"\x12" * 32, "psk_boxes": [["hosp-a", b"\x13" * 32, b"\x14" * 80]],
    "project": "LUNG-1", "date_from": 20200101, "date_to": 20251231, "waiver": 1,
    "peer_id": "12D3KooWabc", "addr": "/ip4/10.0.0.5/tcp/26656", "param": "max_block_txs", "value": 500,
}


def test_every_tx_type_has_a_dicom_event_id():
    assert set(TYPE_EVENT) == set(TX_TYPES)


@pytest.mark.parametrize("tx_type", sorted(TX_TYPES))
@pytest.mark.parametrize("with_optional", [False, True])
def test_every_tx_type_maps_to_a_valid_audit_event(tx_type, with_optional):
    required, optional = schema(tx_type)
    fields = {k: VALUES[k] for k in (required | (optional if with_optional else set())) - {"type"}}
    fields["type"] = tx_type
    ev = audit_event(b"\xab" * 32, 7, 3, fields)
    AuditEvent.model_validate(ev)
    assert ev["id"] == "ab" * 32 and ev["subtype"][0]["code"] == tx_type
    assert ev["recorded"] == "2026-11-27T10:00:00.123Z"
    assert ev["source"]["site"] == "hosp-a"
    whats = [e["what"]["identifier"]["value"] for e in ev["entity"]]
    if "patient" in fields:
        assert "04" * 16 in whats
    if "study" in fields:
        assert "05" * 16 in whats
    if "outcome" in fields:
        assert ev["outcome"] == "4"
    if "user" in fields:
        assert any(a["requestor"] and a["who"]["identifier"]["value"] == "03" * 16 for a in ev["agent"])
