"""prior_imaging across key epochs (issue 13): one hospital's study recorded under an epoch-1 and an epoch-2
token is one prior, not two; different studies, or one study at two hospitals, stay apart."""

from __future__ import annotations

from ledger_helpers import Consortium

from node.ledger.chain import Chain
from node.ledger.store import Store
from node.rpc.prior import prior_studies

PATIENT = b"\x00\x02" + b"p" * 14


def tok(epoch: int, label: str) -> bytes:
    return epoch.to_bytes(2, "big") + label.encode().ljust(14, b".")


def test_one_study_across_epochs_is_one_prior(tmp_path):
    c = Consortium()
    store = Store(tmp_path / "chain", sync=False)
    chain = Chain(c.genesis, store)
    series = tok(0, "series-local")  # a local (HMAC) token: the same in every OPRF epoch
    old = b"\x00\x01" + b"s" * 14
    new = b"\x00\x02" + b"t" * 14

    def stored(member, study, series_tokens, day):
        return c.tx(member, "instances.stored", patient=PATIENT, study=study, purpose="TREAT", ae="CT01",
                    action="C", outcome=0, modality="CT", body_part="HEAD", study_date=20261100 + day,
                    n_instances=2, series=series_tokens)

    try:
        c.commit(chain, [stored(0, old, [series], 3)])  # epoch 1
        c.commit(chain, [stored(0, new, [series], 3),  # the same study re-sent under epoch 2
                         stored(1, new, [tok(0, "b-series")], 3),  # the same study at another hospital
                         stored(0, b"\x00\x02" + b"u" * 14, [tok(0, "other")], 9)])  # another study
        out = prior_studies(store, PATIENT, {}, None, 30, 1_900_000_000_000)
        by = {(s["member"], s["study"]): s for s in out["studies"]}
        assert len(out["studies"]) == 3, out
        merged = by[("hosp-a", new.hex())]
        assert merged["earlier_tokens"] == [old.hex()] and merged["instances"] == 4
        assert ("hosp-a", old.hex()) not in by
        assert "earlier_tokens" not in by[("hosp-b", new.hex())]
        # no repeat pair between a study and itself under its older token
        assert not [r for r in out["repeats"] if {r["first"]["study"], r["repeat"]["study"]} == {old.hex(), new.hex()}]
    finally:
        store.close()
