"""Equivocation evidence reaches the chain only when it proves what it claims."""

from __future__ import annotations

import pytest
from ledger_helpers import CHAIN_ID, T0

from consensus.certificate import commit_signing_bytes
from consensus.evidence import encode_evidence
from node.ledger.chain import ProposalError
from node.ledger.equivocation import evidence_tx_fields
from node.ledger.intake import make_tx
from node.ledger.tx import TxError


def equivocation(consortium, offender: int, signer=None) -> bytes:
    """Member `offender` commits two different digests at view 0, height 5 (signed by `signer` if given)."""
    key = signer or consortium.keys[offender]
    votes = [(d, key.sign(commit_signing_bytes(CHAIN_ID, 0, 5, d)).signature) for d in (b"\x01" * 32, b"\x02" * 32)]
    return encode_evidence("commit", CHAIN_ID, offender, 0, 5, votes[0], votes[1])


def evidence_tx(consortium, blob: bytes, reporter: int = 0, **override) -> bytes:
    fields = {**evidence_tx_fields(blob), **override}
    return make_tx("evidence.equivocation", consortium.keys[reporter], chain_id=CHAIN_ID,
                   member=consortium.name(reporter), ts=T0, **fields)


def test_true_equivocation_is_admitted_and_committed(chain, consortium):
    raw = evidence_tx(consortium, equivocation(consortium, offender=2))
    tx = chain.check_tx(raw)
    assert tx.fields["offender"] == 2
    block = consortium.commit(chain, [raw])
    assert chain.store.get_tx(tx.hash)[0] == block.height


def test_false_accusation_is_refused(chain, consortium):
    # Member 3 signs two votes and member 0 claims member 2 made them.
    forged = evidence_tx(consortium, equivocation(consortium, offender=2, signer=consortium.keys[3]))
    with pytest.raises(TxError, match="does not prove equivocation by member 2"):
        chain.check_tx(forged)


def test_two_identical_votes_or_a_swapped_offender_prove_nothing(chain, consortium):
    blob = equivocation(consortium, offender=2)
    fields = evidence_tx_fields(blob)
    with pytest.raises(TxError, match="evidence"):
        chain.check_tx(evidence_tx(consortium, blob, offender=1))
    with pytest.raises(TxError):  # the schema itself refuses two identical messages
        evidence_tx(consortium, blob, evidence=[fields["evidence"][0]] * 2)


def test_a_primary_cannot_slip_a_false_accusation_into_a_block(chain, consortium):
    forged = evidence_tx(consortium, equivocation(consortium, offender=1, signer=consortium.keys[0]))
    payload = chain.build_proposal(1, 0, T0, [forged])
    with pytest.raises(ProposalError, match="does not prove equivocation"):
        chain.validate_proposal(1, payload, now_ms=T0)


def test_one_evidence_tx_per_offender_per_interval():
    """A flooding member's equivocations become one tx per interval from this node, per offender."""
    from node.ledger.equivocation import EvidenceLimiter

    now = [0.0]
    limiter = EvidenceLimiter(interval=60.0, clock=lambda: now[0])
    assert limiter.allow(5) and limiter.allow(6)
    assert not any(limiter.allow(5) for _ in range(100))
    now[0] = 59.9
    assert not limiter.allow(6)
    now[0] = 60.0
    assert limiter.allow(5) and limiter.allow(6) and limiter.suppressed == 101
