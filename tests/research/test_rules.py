"""The research rules as every validator applies them (node.ledger.research via node.ledger.state): consent
ownership, quorum votes, projects and the export gate; refused at admission with the reason, rejected at
execution if committed anyway, and re-derived identically by offline verification."""

from __future__ import annotations

import pytest
from ledger_helpers import T0

from node.ledger.block import APPLIED, REJECTED
from node.ledger.chain import TxBreaksRule
from node.ledger.tx import TxError, decode_tx
from node.ledger.verifier import verify_chain

DAY = 86_400_000


def _export(c, member=1, patient=None, **kw):
    fields = {"patient": patient, "study": c.pseudo.study("1.2.3.99"), "ae": "RESEARCH", "purpose": "HRESCH",
              "outcome": 0, "action": "R", "modality": "CT", "project": "LUNG-1"}
    fields.update(kw)
    return c.tx(member, "export", **{k: v for k, v in fields.items() if v is not None})


def _project(c, sponsor=0, code="LUNG-1", **kw):
    fields = {"project": code, "digest": b"\xee" * 32, "purpose": "HRESCH", "scope": "IMG-CT",
              "expires": T0 + 365 * DAY}
    fields.update(kw)
    return c.tx(sponsor, "research.project.registered", **fields)


def _status(chain, c, txs):
    return list(c.commit(chain, txs).statuses)


def test_consent_is_owned_by_the_home_member_and_changed_otherwise_only_by_quorum(consortium, chain, store):
    c = consortium
    pat = c.pseudo.patient("P-OWN", "HOSP-A")
    grant = c.tx(0, "consent.granted", patient=pat, grantee=c.pseudo.grantee("ANY-APPROVED-PROJECT"), project="ANY-APPROVED-PROJECT", scope="IMG", purpose="HRESCH")
    assert _status(chain, c, [grant]) == [APPLIED]
    assert store.state_get(b"home/" + pat) == b"hosp-a"
    # hosp-d (the attack in the issue) can neither revoke nor grant for hosp-a's patient
    revoke_d = c.tx(3, "consent.revoked", patient=pat, grantee=c.pseudo.grantee("ANY-APPROVED-PROJECT"), project="ANY-APPROVED-PROJECT", scope="IMG")
    grant_d = c.tx(3, "research.access.granted", patient=pat, grantee=c.pseudo.grantee("X"), project="X", scope="ALL", purpose="HRESCH")
    with pytest.raises(TxBreaksRule, match="home member 'hosp-a'"):
        chain.check_tx(revoke_d)  # the honest node's own admission check
    blk = c.commit(chain, [revoke_d, grant_d])  # forced into a block: every validator rejects both
    assert list(blk.statuses) == [REJECTED, REJECTED]
    assert "home member 'hosp-a'" in chain.state.rejections[blk.tx_hashes[0]]
    assert len(list(store.state_items(b"consent/" + pat))) == 1
    assert list(store.state_items(b"research/" + pat)) == []
    # a quorum (3 of 4) of identical votes revokes; 2 votes do not
    votes = [c.tx(i, "consent.vote", patient=pat, grantee=c.pseudo.grantee("ANY-APPROVED-PROJECT"), project="ANY-APPROVED-PROJECT", scope="IMG", action="D")
             for i in (1, 2, 3)]
    assert _status(chain, c, votes[:2]) == [APPLIED, APPLIED]
    assert len(list(store.state_items(b"consent/" + pat))) == 1
    assert _status(chain, c, votes[2:]) == [APPLIED]
    assert list(store.state_items(b"consent/" + pat)) == []
    # the home member keeps its role
    assert _status(chain, c, [c.tx(0, "consent.granted", patient=pat, grantee=c.pseudo.grantee("LUNG-1"), project="LUNG-1", scope="ALL",
                                   purpose="HRESCH")]) == [APPLIED]
    verify_chain(store, c.genesis)  # offline replay derives the same statuses and state


def test_export_gate(consortium, chain, store):
    c = consortium
    pat = c.pseudo.patient("P-GATE", "HOSP-B")
    # unregistered project
    unreg = _export(c, patient=pat)
    with pytest.raises(TxBreaksRule, match="LUNG-1 is not registered"):
        chain.check_tx(unreg)
    assert _status(chain, c, [unreg]) == [REJECTED]
    # registered, but hosp-b (the data holder) has not approved it
    assert _status(chain, c, [_project(c)]) == [APPLIED]
    assert _status(chain, c, [_project(c, sponsor=2)]) == [REJECTED]  # a code is registered once
    unappr = _export(c, patient=pat)
    with pytest.raises(TxBreaksRule, match="has not approved LUNG-1"):
        chain.check_tx(unappr)
    assert _status(chain, c, [c.tx(1, "research.project.approved", project="LUNG-1")]) == [APPLIED]
    # approved, but no consent
    with pytest.raises(TxBreaksRule, match="no consent in force"):
        chain.check_tx(_export(c, patient=pat))
    # research without naming a project
    with pytest.raises(TxBreaksRule, match="must name an approved project"):
        chain.check_tx(_export(c, patient=pat, project=None))
    # consent by the patient's home member (hosp-b) for this project -> the export passes
    consent = c.tx(1, "consent.granted", patient=pat, grantee=c.pseudo.grantee("LUNG-1"), project="LUNG-1", scope="IMG-CT", purpose="HRESCH",
                   expires=T0 + 30 * DAY)
    assert _status(chain, c, [consent]) == [APPLIED]
    ok = _export(c, patient=pat)
    chain.check_tx(ok)
    assert _status(chain, c, [ok]) == [APPLIED]
    # outside the project's scope (MR), or a member that did not approve (hosp-c)
    with pytest.raises(TxBreaksRule, match="outside the project's scope"):
        chain.check_tx(_export(c, patient=pat, modality="MR"))
    with pytest.raises(TxBreaksRule, match="hosp-c has not approved"):
        chain.check_tx(_export(c, member=2, patient=pat))
    # a non-research export is not gated
    assert _status(chain, c, [_export(c, patient=pat, purpose="TREAT", project=None)]) == [APPLIED]
    # revoke: the next export is refused by the node and, forced, rejected at execution
    assert _status(chain, c, [c.tx(1, "consent.revoked", patient=pat, grantee=c.pseudo.grantee("LUNG-1"), project="LUNG-1", scope="IMG-CT")]) == [APPLIED]
    again = _export(c, patient=pat)
    with pytest.raises(TxBreaksRule, match="no consent in force"):
        chain.check_tx(again)
    blk = c.commit(chain, [again])
    assert list(blk.statuses) == [REJECTED] and "no consent" in chain.state.rejections[blk.tx_hashes[0]]
    verify_chain(store, c.genesis)


def test_consent_expiry_is_judged_by_the_block_time(consortium, chain, store):
    c = consortium
    pat = c.pseudo.patient("P-EXP", "HOSP-B")
    c.commit(chain, [_project(c), c.tx(1, "research.project.approved", project="LUNG-1"),
                     c.tx(1, "consent.granted", patient=pat, grantee=c.pseudo.grantee("ANY-APPROVED-PROJECT"), project="ANY-APPROVED-PROJECT", scope="ALL",
                          purpose="HRESCH", expires=T0 + DAY)])
    assert _status(chain, c, [_export(c, patient=pat)]) == [APPLIED]
    late = _export(c, patient=pat)
    payload = chain.build_proposal(chain.height + 1, 0, T0 + 2 * DAY, [late])
    blk = chain.execute(payload, c.certificate(chain, payload, chain.height + 1))
    assert list(blk.statuses) == [REJECTED]
    verify_chain(store, c.genesis)


def test_waiver_and_purpose_hierarchy(consortium, chain):
    c = consortium
    pat = c.pseudo.patient("P-W", "HOSP-B")
    c.commit(chain, [_project(c, code="RETRO-2", purpose="CLINTRCH", waiver=1, scope="IMG",
                              date_from=20200101, date_to=20251231),
                     c.tx(1, "research.project.approved", project="RETRO-2")])
    # waiver: no consent needed, but the data scope (dates) and purpose still apply
    chain.check_tx(_export(c, patient=pat, project="RETRO-2", purpose="CLINTRCHPC", study_date=20240505))
    with pytest.raises(TxBreaksRule, match="date range"):
        chain.check_tx(_export(c, patient=pat, project="RETRO-2", purpose="CLINTRCH", study_date=20190505))
    with pytest.raises(TxBreaksRule, match="outside the project's purpose"):
        chain.check_tx(_export(c, patient=pat, project="RETRO-2", purpose="HRESCH", study_date=20240505))


def test_scopes_and_project_codes_are_codes(consortium):
    c = consortium
    pat = c.pseudo.patient("P-C", "HOSP-B")
    with pytest.raises(TxError, match="scope"):
        c.tx(1, "consent.granted", patient=pat, grantee=c.pseudo.grantee("LUNG-1"), project="LUNG-1", scope="CT chest 2024", purpose="HRESCH")
    with pytest.raises(TxError, match="project"):
        _project(c, code="lung study; drop")
    with pytest.raises(TxError, match="purpose"):
        _project(c, purpose="research")
    raw = _project(c)
    assert decode_tx(raw).fields["scope"] == "IMG-CT"


def test_a_gossiped_tx_that_breaks_a_rule_is_refused_without_scoring_the_member(consortium, chain, tmp_path):
    """An honest member may gossip one: it admitted the export before the consent was revoked."""
    import msgpack

    from node.ledger.tx import tx_hash
    from node.runtime.gossip import TxGossip
    from node.runtime.mempool import Mempool
    from node.runtime.peerscore import PeerScores
    from node.runtime.settings import MempoolConfig

    c = consortium
    mempool = Mempool(tmp_path / "mempool", 1000)
    try:
        g = TxGossip(lambda channel, data: 0, chain, mempool, MempoolConfig(), on_admitted=lambda: None,
                     scores=PeerScores(log_interval=10.0))
        bad = _export(c, patient=c.pseudo.patient("P-G", "H"))  # no such project
        good = c.tx(1)
        g.on_batch("peer-b", msgpack.packb([bad, good], use_bin_type=True))
        assert tx_hash(good) in mempool and tx_hash(bad) not in mempool
        assert g.stats["txs_refused"] == 1 and g.scores.score("peer-b") == 0
    finally:
        mempool.close()


def test_a_consent_names_its_project_so_the_grantee_may_be_a_token(consortium, chain):
    """Issue 13 may turn the grantee into a token: the project field carries what the gate matches."""
    c = consortium
    pat = c.pseudo.patient("P-TOK", "HOSP-B")
    c.commit(chain, [_project(c), c.tx(1, "research.project.approved", project="LUNG-1")])
    opaque = c.pseudo.grantee("lung-lab-uni")  # a grantee is a consortium token (issue 13)
    c.commit(chain, [c.tx(1, "consent.granted", patient=pat, grantee=opaque, scope="IMG", purpose="HRESCH",
                          project="OTHER-9")])
    with pytest.raises(TxBreaksRule, match="no consent in force"):
        chain.check_tx(_export(c, patient=pat))  # a consent for another project does not cover LUNG-1
    c.commit(chain, [c.tx(1, "consent.granted", patient=pat, grantee=opaque, scope="IMG-CT", purpose="HRESCH",
                          project="LUNG-1")])
    chain.check_tx(_export(c, patient=pat))
