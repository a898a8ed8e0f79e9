"""Consortium-wide redundancy report on a real 4-node testnet: repeat studies of one patient (CT head at
two hospitals 6 days apart, imported through the DICOM hook) are listed by `radchain report redundancy`
at a third hospital, by patient token only; the window, modality and cross-hospital filters narrow it;
hostile params are refused."""

from __future__ import annotations

import csv
import json
from datetime import timedelta

import pytest
from interop_helpers import TODAY, _ct_files, radchain

pytestmark = pytest.mark.timeout(180)


def report(net, *args: str, node: int = 2) -> dict:
    res = radchain("report", "redundancy", "--testnet", str(net.out), "--node", net.nodes[node].name, "--json",
                   *args)
    return json.loads(res.stdout)


def token(net, patient_id: str) -> str:
    return net.rpc(0, "prior_imaging", {"patient_id": patient_id, "issuer": "HOSP-A"})["patient"]


def test_repeat_studies_across_hospitals_are_listed_by_token(net, tmp_path):
    a, b, d = (net.nodes[i].name for i in (0, 1, 3))
    prior1 = token(net, "PRIOR-1")
    # a same-hospital repeat of another patient: MR knee twice at node d, 2 days apart
    _ct_files(tmp_path / "k1", 2, patient="REDUND-1", issuer="HOSP-A", body_part="KNEE", modality="MR",
              day=TODAY - timedelta(days=3))
    _ct_files(tmp_path / "k2", 1, patient="REDUND-1", issuer="HOSP-A", body_part="KNEE", modality="MR",
              day=TODAY - timedelta(days=1))
    for folder in ("k1", "k2"):
        radchain("dicom-import", "--home", str(net.nodes[3].home), str(tmp_path / folder))
    redund1 = token(net, "REDUND-1")

    def mine(res: dict) -> list[tuple]:
        return sorted((r["patient"], r["modality"], r["body_part"], r["days_apart"], r["cross_hospital"],
                       r["first"]["member"], r["repeat"]["member"])
                      for r in res["repeats"] if r["patient"] in (prior1, redund1))

    want = sorted([(prior1, "CT", "HEAD", 6, True, a, b), (redund1, "MR", "KNEE", 2, False, d, d)])
    net.wait_until(lambda: mine(report(net, "--within-days", "30")) == want, 60,
                   "both repeats listed at a third hospital")
    res = report(net, "--within-days", "30")
    assert res["cross_hospital"] >= 1 and res["listed_all"] and not res["truncated"]
    assert res["studies"] >= 5 and res["by_kind"]["CT HEAD"] >= 1
    # tokens only: no raw patient id anywhere in the answer
    text = json.dumps(res)
    assert "PRIOR-1" not in text and "REDUND-1" not in text and "HOSP-A" not in text
    # the window: 6 days apart is not a repeat within 5; 2 days apart is
    assert mine(report(net, "--within-days", "5")) == [(redund1, "MR", "KNEE", 2, False, d, d)]
    assert mine(report(net, "--within-days", "1")) == []
    assert mine(report(net, "--within-days", "30", "--cross-hospital")) == [(prior1, "CT", "HEAD", 6, True, a, b)]
    assert mine(report(net, "--within-days", "30", "--modality", "MR")) == [(redund1, "MR", "KNEE", 2, False, d, d)]
    # a store window that ends before anything was stored finds nothing
    assert report(net, "--since", "1999-01-01T00:00:00Z", "--until", "2000-01-01T00:00:00Z")["repeats"] == []
    # the table: a header row, one line per pair, the summary; the CSV has the same pairs. Asked at another
    # node than `res`: it may apply hosp-d's import blocks a moment after the third hospital did
    top = net.height(2)
    net.wait_until(lambda: net.height(1) >= top, 60, "hosp-b has every block the third hospital had")
    out = tmp_path / "rep"
    table = radchain("report", "redundancy", "--testnet", str(net.out), "--node", net.nodes[1].name,
                     "--within-days", "30", "--out", str(out)).stdout.splitlines()
    assert table[0].split()[:3] == ["PATIENT", "TOKEN", "MODALITY"]
    assert any(line.startswith(prior1) and "other hospital" in line for line in table)
    assert table[-1].endswith(f"among {res['studies']} studies of {res['patients']} patients")
    rows = list(csv.DictReader((out / "redundancy.csv").open()))
    assert {(r["patient_token"], r["days_apart"]) for r in rows} >= {(prior1, "6"), (redund1, "2")}


def test_redundancy_refuses_bad_params(net):
    from node.testnet import rpc_call

    url, tok = net.nodes[2].rpc, net.nodes[2].token
    for params in ({"within_days": -1}, {"within_days": "30"}, {"within_days": 10 ** 9}, {"modality": "ct"},
                   {"body_part": "X" * 17}, {"since": "yesterday"}, {"since": 5, "until": 5},
                   {"cross_hospital": 1}, {"patient": "ab" * 16}, {"extra": True}):
        reply = rpc_call(url, "redundancy", params, tok)
        assert reply.get("error", {}).get("code") == -32602, (params, reply)
