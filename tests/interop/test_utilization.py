"""Utilization on the real testnet: events submitted at three hospitals in a March 2025 window come back
from `radchain report utilization` (run against a fourth node) as CSV counts that match them exactly, with
store-to-first-read times and the repeat-imaging rate, and as PNG charts that are real, non-trivial images."""

from __future__ import annotations

import csv
import itertools
import struct
from datetime import UTC, datetime

import pytest
from interop_helpers import radchain

pytestmark = pytest.mark.timeout(180)

_ids = itertools.count()


def _t(day: int, hour: int, minute: int = 0) -> int:
    return int(datetime(2025, 3, day, hour, minute, tzinfo=UTC).timestamp() * 1000)  # 2025-03-03 is a Monday


def _ev(kind: str, patient: str, study: str, when: int, **extra) -> dict:
    return {"type": kind, "patient_id": patient, "issuer": "HOSP-U", "study_uid": study, "actor": "dr.u",
            "purpose": "TREAT", "time": when, "event_id": f"util-{next(_ids)}", **extra}


# (node index, event)
EVENTS = [
    (0, _ev("instances.stored", "U-1", "9.1", _t(3, 9), modality="CT", body_part="HEAD", n_instances=10)),
    (0, _ev("instances.accessed", "U-1", "9.1", _t(3, 9, 30))),
    (1, _ev("instances.accessed", "U-1", "9.1", _t(3, 10))),
    (0, {**_ev("query", "U-1", "9.1", _t(3, 11)), "study_uid": None}),
    (1, _ev("instances.stored", "U-1", "9.2", _t(5, 14), modality="CT", body_part="HEAD", n_instances=5,
            study_date="2025-03-05")),
    (1, _ev("export", "U-1", "9.2", _t(5, 15))),
    (1, _ev("instances.accessed", "U-1", "9.2", _t(6, 8))),
    (2, _ev("instances.stored", "U-2", "9.3", _t(7, 20), modality="MR", body_part="KNEE", n_instances=1)),
    (2, _ev("instances.stored", "U-2", "9.3", _t(7, 20, 1), modality="MR", body_part="KNEE", n_instances=1)),
    (2, _ev("instances.stored", "U-3", "9.4", _t(7, 21), modality="MR", body_part="KNEE", outcome=8)),  # failed
]


@pytest.fixture(scope="module")
def report(net, tmp_path_factory):
    hashes = []
    for i, ev in EVENTS:
        ev = {k: v for k, v in ev.items() if v is not None}
        res = net.rpc(i, "submit_event", {"event": ev, "mode": "commit", "timeout": 30}, timeout=40)
        assert res["outcome"] == "applied", res
        hashes.append(res["hash"])
    top = max(net.rpc(i, "status")["height"] for i in range(3))
    net.wait_until(lambda: net.rpc(3, "status")["height"] >= top, 60, "node 3 caught up")
    out = tmp_path_factory.mktemp("util")
    radchain("report", "utilization", "--testnet", str(net.out), "--node", net.nodes[3].name,
             "--since", "2025-03-03T00:00:00Z", "--until", "2025-03-10T00:00:00Z", "--out", str(out))
    return out


def rows(path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_csv_counts_match_the_submitted_events(net, report):
    a, b, c = (net.nodes[i].name for i in range(3))
    by_member = {r["member"]: {k: int(v) for k, v in r.items() if k != "member"} for r in rows(report / "by_member.csv")}
    assert by_member == {
        a: {"studies": 1, "instances": 10, "reads": 1, "exports": 0, "queries": 1, "transfers": 0},
        b: {"studies": 1, "instances": 5, "reads": 2, "exports": 1, "queries": 0, "transfers": 0},
        c: {"studies": 1, "instances": 2, "reads": 0, "exports": 0, "queries": 0, "transfers": 0},
    }
    assert {r["modality"]: (int(r["studies"]), int(r["instances"])) for r in rows(report / "by_modality.csv")} \
        == {"CT": (2, 15), "MR": (1, 2)}
    weekday = {r["weekday"]: r for r in rows(report / "by_weekday.csv")}
    assert [int(weekday[d]["reads"]) for d in ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")] == [2, 0, 0, 1, 0, 0, 0]
    assert [int(weekday[d]["studies"]) for d in ("Mon", "Wed", "Fri")] == [1, 1, 1]
    hour = {int(r["hour_utc"]): r for r in rows(report / "by_hour.csv")}
    assert {h: int(r["instances"]) for h, r in hour.items() if int(r["instances"])} == {9: 10, 14: 5, 20: 2}
    assert {h: int(r["reads"]) for h, r in hour.items() if int(r["reads"])} == {8: 1, 9: 1, 10: 1}
    assert sorted(float(r["minutes"]) for r in rows(report / "store_to_first_read.csv")) == [30.0, 1080.0]
    summary = {r["metric"]: r["value"] for r in rows(report / "summary.csv")}
    assert summary["studies"] == "3" and summary["repeat_studies"] == "1"  # the CT head repeat at hosp-b
    assert float(summary["repeat_rate"]) == pytest.approx(1 / 3, abs=1e-4)
    assert summary["truncated"] == "False"


def test_png_charts_are_real_images(report):
    for name in ("by_member", "by_weekday", "by_hour", "by_modality", "store_to_first_read"):
        data = (report / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        width, height = struct.unpack(">II", data[16:24])
        assert width >= 300 and height >= 300 and len(data) > 10_000, (name, width, height, len(data))


def test_bad_windows_are_refused(net):
    from node.testnet import rpc_call

    url, token = net.nodes[3].rpc, net.nodes[3].token
    for params in ({"since": "2025-03-10T00:00:00Z", "until": "2025-03-03T00:00:00Z"}, {"since": "soon"},
                   {"repeat_days": -1}, {"member": "x" * 65}, {"other": 1}):
        assert rpc_call(url, "utilization", params, token)["error"]["code"] == -32602, params
    assert "error" in rpc_call(url, "utilization", {}, None)  # reads need a token
