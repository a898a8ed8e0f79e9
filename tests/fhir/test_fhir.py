"""/fhir against a real 4-node testnet: events submitted at two hospitals come back from a third node as
valid FHIR R4 AuditEvents (validated with fhir.resources' R4B models, the R4 flavour fhir.resources 8
ships; AuditEvent is unchanged between R4 and R4B), with correct filters and paging, read by id, through
a real FHIR client (fhirpy), behind the read token; hostile parameters are refused with 400."""

from __future__ import annotations

import itertools
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome

from node.fhir.mapping import DCM, PATIENT_SYSTEM, STUDY_SYSTEM
from node.testnet import LocalTestnet, shared_tls_context

pytestmark = pytest.mark.timeout(180)

T0 = "2026-11-02T08:00:00+00:00"
HOUR = 3_600_000
_ids = itertools.count()


def _at(hours: int) -> int:
    return 1_793_606_400_000 + hours * HOUR  # 2026-11-02T08:00:00Z


# (node, event) in submission order; P1 at two hospitals, P2 once
EVENTS = [
    (0, {"type": "instances.stored", "patient_id": "P1", "issuer": "HOSP-A", "study_uid": "1.2.3.1",
         "actor_ae": "CT01", "peer_ae": "MODALITY", "n_instances": 3, "purpose": "TREAT"}),
    (0, {"type": "instances.accessed", "patient_id": "P1", "issuer": "HOSP-A", "study_uid": "1.2.3.1",
         "actor": "dr.who", "actor_ae": "VIEWER", "purpose": "TREAT"}),
    (0, {"type": "query", "patient_id": "P1", "issuer": "HOSP-A", "actor": "dr.who", "purpose": "TREAT"}),
    (1, {"type": "instances.stored", "patient_id": "P1", "issuer": "HOSP-A", "study_uid": "1.2.3.2",
         "actor_ae": "MR02", "n_instances": 40, "purpose": "TREAT"}),
    (1, {"type": "export", "patient_id": "P1", "issuer": "HOSP-A", "study_uid": "1.2.3.2",
         "actor": "dr.no", "peer_ae": "CDBURN", "purpose": "TREAT", "outcome": 4}),
    (1, {"type": "instances.accessed", "patient_id": "P2", "issuer": "HOSP-A", "study_uid": "1.2.3.3",
         "actor": "dr.no", "purpose": "TREAT"}),
    (0, {"type": "consent.granted", "patient_id": "P1", "issuer": "HOSP-A", "grantee": "hosp-b",
         "scope": "IMG", "purpose": "TREAT", "actor": "dr.who"}),
]


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    testnet = LocalTestnet(tmp_path_factory.mktemp("fhirnet"), 4)
    testnet.start()
    try:
        testnet.wait_until(lambda: all(testnet.rpc(i, "status", timeout=2)["peers"] >= 3 for i in range(4)),
                           120, "all four nodes up and connected")
        testnet.hashes = []
        for hours, (i, ev) in enumerate(EVENTS):
            ev = {**ev, "event_id": f"fhir-{next(_ids)}", "time": _at(hours)}
            res = testnet.rpc(i, "submit_event", {"event": ev, "mode": "commit", "timeout": 30}, timeout=40)
            assert res["status"] == "committed" and res["outcome"] == "applied", res
            testnet.hashes.append(res["hash"])
        top = max(testnet.rpc(i, "status")["height"] for i in range(2))
        testnet.wait_until(lambda: testnet.rpc(2, "status")["height"] >= top, 60, "node 2 caught up")
        trail = testnet.rpc(2, "audit_trail", {"patient_id": "P1", "issuer": "HOSP-A"})["entries"]
        testnet.p1 = trail[0]["patient"]
        testnet.p2 = testnet.rpc(2, "audit_trail", {"patient_id": "P2", "issuer": "HOSP-A"})["entries"][0]["patient"]
        testnet.studies = {e["hash"]: e.get("study") for e in trail}
        yield testnet
    finally:
        testnet.stop_all()


def base(net) -> str:
    return net.nodes[2].rpc + "/fhir"


def get(net, path: str, params=None, token: str | None = "reader") -> httpx.Response:
    tok = net.nodes[2].read_token if token == "reader" else token
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    return httpx.get(base(net) + path if path.startswith("/") else path, params=params, headers=headers,
                     timeout=15, verify=shared_tls_context())


def search(net, params) -> tuple[list[dict], dict]:
    r = get(net, "/AuditEvent", params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    bundle = r.json()
    Bundle.model_validate(bundle)
    events = [e["resource"] for e in bundle["entry"]]
    for ev in events:
        AuditEvent.model_validate(ev)
    return events, bundle


def search_all(net, params) -> list[dict]:
    """Follow next links to the end; also checks each link keeps the filters."""
    events, bundle = search(net, params)
    pages = 1
    while (nxt := next((x["url"] for x in bundle["link"] if x["relation"] == "next"), None)) is not None:
        query = dict(parse_qsl(urlsplit(nxt).query))
        for k, v in (params.items() if isinstance(params, dict) else params):
            assert query[k] == str(v)
        more, bundle = search(net, query)
        events += more
        pages += 1
        assert pages < 50
    return events


def test_every_event_comes_back_valid_with_its_codes(net):
    events = search_all(net, {"patient": net.p1})
    assert [e["id"] for e in events] == [h for h, (_, ev) in zip(net.hashes, EVENTS, strict=True)
                                         if ev["patient_id"] == "P1"]
    by_id = {e["id"]: e for e in events}
    stored = by_id[net.hashes[0]]
    assert stored["type"] == {"system": DCM, "code": "110104", "display": "DICOM Instances Transferred"}
    assert stored["subtype"][0]["code"] == "instances.stored"
    assert stored["action"] == "C" and stored["outcome"] == "0"
    assert stored["recorded"] == "2026-11-02T08:00:00.000Z"
    assert stored["source"]["site"] == net.nodes[0].name
    assert stored["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"
    patient, study = stored["entity"][0], stored["entity"][1]
    assert patient["what"]["identifier"] == {"system": PATIENT_SYSTEM, "value": net.p1}
    assert patient["role"]["code"] == "1"
    assert study["what"]["identifier"] == {"system": STUDY_SYSTEM, "value": net.studies[net.hashes[0]]}
    assert {"url": "http://hl7.org/fhir/StructureDefinition/auditevent-NumberOfInstances", "valueInteger": 3} \
        in study["extension"]
    aes = {a["who"]["identifier"]["value"]: a["type"]["coding"][0]["code"] for a in stored["agent"]
           if a["who"]["identifier"]["system"] == "urn:dicom:ae-title"}
    assert aes == {"CT01": "110150", "MODALITY": "110153"}  # the modality was the source of the store
    accessed = by_id[net.hashes[1]]
    assert accessed["type"]["code"] == "110103" and accessed["action"] == "R"
    user = [a for a in accessed["agent"] if a["requestor"]]
    assert len(user) == 1 and user[0]["who"]["identifier"]["system"] == "urn:radchain:user-token"
    assert by_id[net.hashes[2]]["type"]["code"] == "110112"
    export = by_id[net.hashes[4]]
    assert export["type"]["code"] == "110106" and export["outcome"] == "4"
    consent = by_id[net.hashes[6]]
    assert consent["type"]["code"] == "110113" and consent["subtype"][0]["code"] == "consent.granted"
    # the grantee is a consortium pseudonym token (issue 13), never the name in clear
    grantee = [d for d in consent["entity"][-1]["detail"] if d["type"] == "grantee"]
    assert len(grantee) == 1 and len(bytes.fromhex(grantee[0]["valueString"])) == 16
    # nothing identifying travels: the raw ids are nowhere in the answer
    text = get(net, "/AuditEvent", {"patient": net.p1}).text
    for raw in ("P1", "HOSP-A", "dr.who", "1.2.3.1"):
        assert f'"{raw}"' not in text


def test_paging_returns_each_event_once_in_order(net):
    everything = search_all(net, {"patient": net.p1})
    paged = search_all(net, {"patient": net.p1, "_count": 2})
    assert [e["id"] for e in paged] == [e["id"] for e in everything] and len(paged) == 6
    first, bundle = search(net, {"patient": net.p1, "_count": 2})
    assert len(first) == 2 and "total" not in bundle  # more pages: no exact total promised
    _, whole = search(net, {"patient": net.p1})
    assert whole["total"] == 6


@pytest.mark.parametrize("params, expected", [
    ({"type": "110104"}, [0, 3]),
    ({"type": f"{DCM}|110104,110112"}, [0, 2, 3]),
    ({"subtype": "instances.accessed"}, [1, 5]),
    ({"subtype": "urn:radchain:tx-type|export", "type": "110106"}, [4]),
    ({"subtype": "export", "type": "110104"}, []),
    ({"outcome": "4"}, [4]),
    ({"outcome": "8,12"}, []),
    ({"agent": "CT01"}, [0]),
    ({"source": "hosp-b"}, [3, 4, 5]),
    ({"date": ["ge2026-11-02T09:00:00Z", "lt2026-11-02T11:00:00Z"]}, [1, 2]),
    ({"date": "2026-11-02"}, [0, 1, 2, 3, 4, 5, 6]),
    ({"date": "le2026-11-01"}, []),
    ({"date": "gt2026-11-02T13:00:00Z"}, [6]),
])
def test_filters(net, params, expected):
    items = [(k, v) for k, vs in params.items() for v in (vs if isinstance(vs, list) else [vs])]
    events = search_all(net, items)
    assert [e["id"] for e in events] == [net.hashes[i] for i in expected]


def test_filters_by_tokens(net):
    p2 = search_all(net, {"patient": f"Patient/{net.p2}"})
    assert [e["id"] for e in p2] == [net.hashes[5]]
    study = net.studies[net.hashes[0]]
    assert [e["id"] for e in search_all(net, {"entity": study})] == net.hashes[:2]
    user = next(a for a in search_all(net, {"patient": net.p1})[1]["agent"] if a["requestor"])
    by_user = search_all(net, {"agent": user["who"]["identifier"]["value"]})
    assert [e["id"] for e in by_user] == [net.hashes[i] for i in (1, 2, 6)]  # dr.who at hosp-a


def test_read_by_id_and_not_found(net):
    r = get(net, f"/AuditEvent/{net.hashes[3]}")
    assert r.status_code == 200
    ev = AuditEvent.model_validate(r.json())
    assert ev.id == net.hashes[3]
    assert r.json() == next(e for e in search_all(net, {"patient": net.p1}) if e["id"] == net.hashes[3])
    for bad in ("0" * 64, "zz" * 32, "abc", "x" * 500):
        r = get(net, f"/AuditEvent/{bad}")
        assert r.status_code == 404, bad
        OperationOutcome.model_validate(r.json())


def test_metadata_is_a_capability_statement(net):
    r = get(net, "/metadata")
    cap = CapabilityStatement.model_validate(r.json())
    assert cap.fhirVersion == "4.0.1"
    (res,) = cap.rest[0].resource
    assert res.type == "AuditEvent"
    assert {p.name for p in res.searchParam} >= {"date", "patient", "entity", "agent", "type", "subtype", "outcome"}


def test_read_token_required(net):
    for path in ("/metadata", "/AuditEvent", f"/AuditEvent/{net.hashes[0]}"):
        for token in (None, "not-a-token-0123456789"):
            r = get(net, path, token=token)
            assert r.status_code == 401, (path, token)
            OperationOutcome.model_validate(r.json())


@pytest.mark.parametrize("params", [
    {"name": "x"}, {"patient": "zz"}, {"patient": "ab" * 17}, {"patient": f"http://other|{'ab' * 16}"},
    {"type": "999999"}, {"subtype": "drop.table"}, {"outcome": "3"}, {"outcome": "x"},
    {"_count": "0"}, {"_count": "1001"}, {"_count": "-1"}, {"date": "yesterday"}, {"date": "ge2026-13-45"},
    {"date": "ap2026"}, {"_cursor": "00"}, {"_cursor": "zz" * 20}, {"agent": "A" * 17},
    {"source": "h" * 65}, {"patient": "a" * 5000}, {"_format": "xml"},
    [("patient", "ab" * 16), ("patient", "cd" * 16)], [("date", "2026")] * 33,
])
def test_hostile_parameters_are_refused(net, params):
    r = get(net, "/AuditEvent", params)
    assert r.status_code == 400, (params, r.text[:200])
    OperationOutcome.model_validate(r.json())
    assert net.rpc(2, "status")["height"] >= 1  # still serving


def test_a_real_fhir_client_searches_and_reads(net):
    from fhirpy import SyncFHIRClient

    client = SyncFHIRClient(base(net), authorization=f"Bearer {net.nodes[2].read_token}")
    found = client.resources("AuditEvent").search(patient=net.p1).limit(2).fetch_all()  # follows next links
    assert [r.id for r in found] == [h for h, (_, ev) in zip(net.hashes, EVENTS, strict=True)
                                     if ev["patient_id"] == "P1"]
    exports = client.resources("AuditEvent").search(type="110106").fetch()
    assert [r.id for r in exports] == [net.hashes[4]]
    one = client.reference("AuditEvent", net.hashes[5]).to_resource()
    assert one["type"]["code"] == "110103"
    AuditEvent.model_validate(one.serialize())
