"""The patient_stored index (node.ledger.store): written in the block's own batch for exactly the successful
store-like events of a patient; prior_imaging reads it and answers what the full patient walk answers; a
store older than the index (no marker, no entries) still verifies and is answered through the fallback."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_helpers import Consortium

from node.ledger.chain import Chain
from node.ledger.store import INDEXES, PATIENT_STORED_MARKER, STORED_TYPES, Store
from node.ledger.tx import decode_tx
from node.ledger.verifier import VerifyError, verify_chain
from node.rpc.prior import prior_studies

TYPES = ("instances.stored", "instances.accessed", "instances.transferred", "import", "export", "query")
PATIENTS = ("PAT-1", "PAT-2")

event = st.fixed_dictionaries({
    "type": st.sampled_from(TYPES), "patient": st.sampled_from(PATIENTS), "study": st.integers(0, 3),
    "outcome": st.sampled_from((0, 0, 0, 4, 8)), "modality": st.sampled_from(("CT", "MR")),
    "body_part": st.sampled_from(("HEAD", "CHEST")), "day": st.integers(1, 28), "member": st.integers(0, 3)})


def build(path, c: Consortium, blocks: list[list[dict]]) -> Store:
    store = Store(path, sync=False)
    chain = Chain(c.genesis, store)
    for block in blocks:
        txs = []
        for e in block:
            fields = {"patient": c.pseudo.patient(e["patient"], "HOSP-A"), "outcome": e["outcome"],
                      "study": c.pseudo.study(f"1.2.9.{e['study']}"), "purpose": "TREAT", "ae": "CT01",
                      "action": "C" if e["type"] in STORED_TYPES else "R"}
            if e["type"] in STORED_TYPES:
                fields.update(modality=e["modality"], body_part=e["body_part"], study_date=20261100 + e["day"],
                              n_instances=3)
            txs.append(c.tx(e["member"], e["type"], **fields))
        c.commit(chain, txs)
    return store


def entries(store: Store, index: str, patient: bytes) -> list:
    return store.query(index, patient, None, None, None, 10_000)[0]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(event, min_size=1, max_size=8), min_size=1, max_size=4))
def test_index_holds_exactly_the_successful_stores_and_prior_answers_the_same(tmp_path_factory, blocks):
    c = Consortium()
    store = build(tmp_path_factory.mktemp("ps") / "chain", c, blocks)
    try:
        assert store.has_patient_stored_index
        now = 1_900_000_000_000
        for name in PATIENTS:
            p = c.pseudo.patient(name, "HOSP-A")
            everything = entries(store, "patient", p)
            want = []
            for e in everything:
                f = decode_tx(store.get_tx(e.tx_hash)[2]).fields
                if f["type"] in STORED_TYPES and f["outcome"] == 0:
                    want.append(e)
            assert entries(store, "patient_stored", p) == want
            fast = prior_studies(store, p, {}, None, 30, now)
            store.has_patient_stored_index = False  # the walk a store without the index does
            slow = prior_studies(store, p, {}, None, 30, now)
            store.has_patient_stored_index = True
            assert fast == slow
            assert sum(s["instances"] for s in fast["studies"]) == 3 * len(want)
        assert verify_chain(store, c.genesis, signatures=False) == len(blocks)
    finally:
        store.close()


def test_store_older_than_the_index_verifies_and_falls_back(tmp_path):
    c = Consortium()
    blocks = [[{"type": "instances.stored", "patient": "PAT-1", "study": s, "outcome": 0, "modality": "CT",
                "body_part": "HEAD", "day": 3 + s, "member": s % 4} for s in range(3)],
              [{"type": "instances.accessed", "patient": "PAT-1", "study": 0, "outcome": 0, "modality": "CT",
                "body_part": "HEAD", "day": 1, "member": 1}]]
    store = build(tmp_path / "chain", c, blocks)
    p = c.pseudo.patient("PAT-1", "HOSP-A")
    now = 1_900_000_000_000
    before = prior_studies(store, p, {}, None, 30, now)
    assert len(before["studies"]) == 3 and len(entries(store, "patient_stored", p)) == 3
    # a store written before the index existed: no marker, no entries
    db = store.db
    db.delete(PATIENT_STORED_MARKER)
    for key in list(db.iterator(prefix=b"I" + INDEXES["patient_stored"], include_value=False)):
        db.delete(key)
    store.close()
    old = Store(tmp_path / "chain", create=False, sync=False)
    try:
        assert not old.has_patient_stored_index
        assert verify_chain(old, c.genesis, signatures=False) == 2  # its missing entries are not damage
        assert prior_studies(old, p, {}, None, 30, now) == before  # answered by the patient walk
    finally:
        old.close()
    # on a store that has the index, a missing entry is damage, named at its height
    store = build(tmp_path / "fresh", Consortium(), blocks)
    try:
        key = next(store.db.iterator(prefix=b"I" + INDEXES["patient_stored"], include_value=False))
        store.db.delete(key)
        try:
            verify_chain(store, c.genesis, signatures=False)
        except VerifyError as exc:
            assert exc.height == 1 and "index entry" in exc.reason
        else:
            raise AssertionError("a deleted patient_stored entry went unnoticed")
    finally:
        store.close()
