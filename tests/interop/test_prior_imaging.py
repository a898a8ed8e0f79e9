"""Prior-imaging lookup on a real 4-node testnet: CT head studies imported through the DICOM hook
(`radchain dicom-import`: header -> categories -> spool -> node RPC -> PBFT) at two hospitals are found
by `radchain prior-imaging` at a third, with their date, modality, body part and instance count, and the
cross-hospital repeat is reported; another patient finds nothing; and hostile category values are refused."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from interop_helpers import TODAY, radchain

pytestmark = pytest.mark.timeout(180)


def prior(net, *args: str, node: int = 2) -> dict:
    res = radchain("prior-imaging", "--testnet", str(net.out), "--node", net.nodes[node].name, "--json", *args)
    return json.loads(res.stdout)


def test_prior_study_at_another_hospital_is_found(net):
    a, b = net.nodes[0].name, net.nodes[1].name
    want = [(b, (TODAY - timedelta(days=4)).isoformat(), ["CT"], ["HEAD"], 2),
            (a, (TODAY - timedelta(days=10)).isoformat(), ["CT"], ["HEAD"], 3)]

    def found():
        got = prior(net, "--patient-id", "PRIOR-1", "--issuer", "HOSP-A", "--body-part", "HEAD")
        return [(s["member"], s["date"], s["modality"], s["body_part"], s["instances"]) for s in got["studies"]]

    net.wait_until(lambda: found() == want, 60, "both CT HEAD studies visible at a third hospital")
    res = prior(net, "--patient-id", "PRIOR-1", "--issuer", "HOSP-A", "--modality", "CT", "--within-days", "90")
    assert len(res["studies"]) == 2 and not res["truncated"]  # the chest CT 200 days ago is out of range
    (rep,) = res["repeats"]
    assert (rep["modality"], rep["body_part"], rep["days_apart"], rep["cross_hospital"]) == ("CT", "HEAD", 6, True)
    assert (rep["first"]["member"], rep["repeat"]["member"]) == (a, b)
    everything = prior(net, "--patient-id", "PRIOR-1", "--issuer", "HOSP-A")
    assert [s["body_part"] for s in everything["studies"]] == [["HEAD"], ["HEAD"], ["CHEST"]]
    assert prior(net, "--patient-id", "PRIOR-1", "--issuer", "HOSP-A", "--modality", "MR")["studies"] == []
    # the human-readable form lists the same studies, at a fourth hospital: seen at the third, the imports'
    # blocks may reach the fourth a moment later
    net.wait_until(lambda: len(prior(net, "--patient-id", "PRIOR-1", "--issuer", "HOSP-A", node=3)["studies"]) == 3,
                   60, "the three PRIOR-1 studies visible at a fourth hospital")
    text = radchain("prior-imaging", "--testnet", str(net.out), "--node", net.nodes[3].name,
                    "--patient-id", "PRIOR-1", "--issuer", "HOSP-A", "--within-days", "30").stdout
    assert text.splitlines()[0].split()[:3] == ["DATE", "HOSPITAL", "MODALITY"]
    assert f"{(TODAY - timedelta(days=4)).isoformat()}  {b}" in text and "other hospital" in text


def test_another_patient_finds_only_their_own(net):
    net.wait_until(lambda: len(prior(net, "--patient-id", "PRIOR-2", "--issuer", "HOSP-A")["studies"]) == 1,
                   60, "PRIOR-2's study committed")
    assert prior(net, "--patient-id", "PRIOR-3", "--issuer", "HOSP-A")["studies"] == []
    assert prior(net, "--patient-id", "PRIOR-1", "--issuer", "HOSP-B")["studies"] == []  # ids are per issuer


def test_raw_patient_needs_a_token_and_bad_params_are_refused(net):
    from node.testnet import rpc_call

    url = net.nodes[2].rpc
    assert rpc_call(url, "prior_imaging", {"patient_id": "PRIOR-1", "issuer": "HOSP-A"}, None)["error"]["code"] != 0
    for params in ({}, {"patient": "zz"}, {"patient": "ab" * 16, "modality": "ct; drop"},
                   {"patient": "ab" * 16, "within_days": -1}, {"patient": "ab" * 16, "now": "yesterday"},
                   {"patient": "ab" * 16, "body_part": "X" * 17}, {"patient": "ab" * 16, "extra": 1},
                   {"patient": "ab" * 16, "within_days": 1, "now": 2**62}):  # past year 9999: was -32603
        reply = rpc_call(url, "prior_imaging", params, net.nodes[2].token)
        assert reply["error"]["code"] == -32602, (params, reply)


def test_hostile_category_values_in_events_are_refused(net):
    base = {"type": "instances.stored", "patient_id": "PRIOR-9", "issuer": "HOSP-A", "study_uid": "1.2.9",
            "actor_ae": "CT01", "purpose": "TREAT"}
    for bad in ({"modality": "Ct"}, {"modality": "C" * 17}, {"body_part": "HEAD\n"}, {"body_part": 7},
                {"study_date": "20261332"}, {"study_date": "1850-01-01"}, {"study_date": "2026-1-1"},
                {"study_date": 2026}):
        with pytest.raises(RuntimeError, match="-32602|rejected|study_date|modality|body_part"):
            net.rpc(0, "submit_event", {"event": {**base, **bad}})
