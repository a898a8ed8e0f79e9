"""Research sharing end to end on a real 4-node testnet with a real Orthanc behind the audit proxy:
projects registered and approved on chain, a consented study exported de-identified with lineage, the
export verified offline, consent ownership, revocation and a forced export rejected by every validator.

hosp-b is the patient's home hospital and the exporter, hosp-c sponsors the project, hosp-d is the member
that tries to change hosp-b's consents, and hosp-a (the primary of view 0) runs tests/research/forcing_node.py:
it skips its own rule check at admission, so a rule-breaking tx submitted to it reaches a block.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from dicom_helpers import RADCHAIN, Orthanc, ProcessHandle, need, run_tool, sample_file, start_proxy, wait_for
from test_e2e_testnet import LiveTestnet

from node.research.deid import STANDARD_UID_ROOT, iter_elements

pytestmark = pytest.mark.timeout(300)

HERE = Path(__file__).parent
STUDY_FILES = ["CT_small.dcm", "MR_small.dcm"]


def radchain(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([RADCHAIN, *args], capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"radchain {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def rpc(tn, name: str, method: str, params: dict | None = None, timeout: float = 60.0):
    """LiveTestnet.rpc with room for commit-mode calls on a loaded machine (its own HTTP timeout is 10 s)."""
    from node.testnet import rpc_call

    n = tn.node(name)
    r = rpc_call(n["rpc"], method, params, n["token"], timeout=timeout)
    if "error" in r:
        raise RuntimeError(f"{name} {method}: {r['error']}")
    return r["result"]


def at_height(tn, name: str, height: int) -> None:
    """Until `name`'s node executed `height`: a block another member's node acknowledged."""
    wait_for(lambda: rpc(tn, name, "status")["height"] >= height, 60, 0.2, f"{name} at height {height}")


def recorded(tn, study: str, types: set[str]) -> None:
    """Until hosp-b's chain holds events of these types for `study` (the audit proxy's spool delivers them)."""
    wait_for(lambda: types <= {e["type"] for e in rpc(tn, "hosp-b", "audit_trail", {"study_uid": study})["entries"]},
             60, 0.2, f"{sorted(types)} of study {study} committed on hosp-b")


def originals(path: Path) -> tuple[set[str], set[str]]:
    """(identifying values, UIDs) of an original file: names, ids, birth date; every non-DICOM-defined UID
    anywhere in the data set (sequences included)."""
    ds = pydicom.dcmread(path)
    ids = {str(ds.get(k, "")).strip() for k in ("PatientName", "PatientID", "PatientBirthDate")} - {""}
    uids = set()
    for el in iter_elements(ds):
        if el.VR == "UI":
            vals = el.value if isinstance(el.value, (list, pydicom.multival.MultiValue)) else [el.value]
            uids |= {str(v) for v in vals if v and not str(v).startswith(STANDARD_UID_ROOT)}
    return ids, uids


def scan(path: Path, forbidden: set[str]) -> list[str]:
    """Every element (file meta, sequences, private tags) whose value is a forbidden one, and any forbidden
    value of 6+ characters anywhere in the file's bytes."""
    ds = pydicom.dcmread(path)
    hits = []
    for container in (ds.file_meta, ds):
        for el in iter_elements(container):
            if el.tag == 0x00020012:  # ImplementationClassUID: the writing software, not the patient
                continue
            vals = el.value if isinstance(el.value, (list, pydicom.multival.MultiValue)) else [el.value]
            hits += [f"{el.tag} {el.keyword}" for v in vals if str(v).strip("\x00 ") in forbidden]
    raw = path.read_bytes()
    hits += [f"bytes {v!r}" for v in forbidden if len(v) >= 6 and v.encode() in raw]
    return hits


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    need("Orthanc", "storescu", "getscu")
    root = tmp_path_factory.mktemp("research")
    tn = LiveTestnet(root / "net")
    # the forced export below needs hosp-a to stay the primary of view 0: a slow, loaded host must not turn a
    # 2 s stall into a view change (this module tests research rules, not view changes)
    for n in tn.nodes:
        with open(Path(n["home"]) / "config.toml", "a") as f:
            f.write("\n[consensus]\nprogress_timeout = 15\n")
    for name in ("hosp-b", "hosp-c", "hosp-d"):
        tn.start(name)
    forcer = ProcessHandle([sys.executable, str(HERE / "forcing_node.py"), tn.node("hosp-a")["home"]],
                           Path(tn.node("hosp-a")["home"]) / "node.log").start()
    orthanc = Orthanc(root / "orthanc", plugin=False).start()
    proxy = None
    try:
        wait_for(tn.ready, 90, 0.2, "4 nodes up and connected")
        proxy, port = start_proxy(Path(tn.node("hosp-b")["home"]), orthanc)
        yield tn, orthanc, port, root
    finally:
        if proxy:
            proxy.stop()
        orthanc.stop()
        forcer.stop()
        tn.stop()


def test_research_export_with_consent(world, tmp_path, browser):
    tn, orthanc, port, root = world
    home = {n["name"]: Path(n["home"]) for n in tn.nodes}
    files = [sample_file(n) for n in STUDY_FILES]
    ct = pydicom.dcmread(files[0])
    study, patient_id = str(ct.StudyInstanceUID), str(ct.PatientID)
    issuer = "hosp-b"  # hosp-b's default Issuer of Patient ID: its node name
    target = ["--home", str(home["hosp-b"])]

    # stored and viewed through hosp-b's audit proxy (the DICOM hook records both)
    run_tool(["storescu", "-aet", "CT_RES", "-aec", "ORTHANC", "127.0.0.1", str(port), *map(str, files)])
    rx = tmp_path / "rx"
    rx.mkdir()
    run_tool(["getscu", "-aet", "VIEW_RES", "-aec", "ORTHANC", "-od", str(rx), "-S", "-k",
              "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(port)])
    # the proxy spools both events and delivers them in the background: the export below needs the store on
    # hosp-b's chain (its lineage), the patient report both
    recorded(tn, study, {"instances.stored", "instances.accessed"})

    # hosp-c sponsors LUNG-1 (CT research) and OTHER-2; hosp-b approves only LUNG-1, and starts to before the
    # registration reaches its node: `approve` waits for it (a project never registered is refused)
    nope = radchain("research", "approve", "NOPE-9", "--wait", "0.3", *target, check=False)
    assert nope.returncode == 1 and "NOPE-9 is not registered" in nope.stderr, nope.stderr
    early = subprocess.Popen([RADCHAIN, "research", "approve", "LUNG-1", "--wait", "90", *target],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "not on this node yet" in early.stderr.readline()
    ethics = tmp_path / "ethics.pdf"
    ethics.write_bytes(b"%PDF ethics board approval 2026-117")
    radchain("research", "register", "--home", str(home["hosp-c"]), "--project", "LUNG-1", "--ethics-doc",
             str(ethics), "--scope", "IMG-CT", "--expires", "2036-01-01")
    other2 = radchain("research", "register", "--home", str(home["hosp-c"]), "--project", "OTHER-2",
                      "--ethics-doc", str(ethics), "--scope", "IMG", "--expires", "2036-01-01")
    out, err = early.communicate(timeout=120)
    assert early.returncode == 0 and '"committed"' in out, (out, err)
    # OTHER-2 was committed on hosp-c's node: hosp-b's, listed next, may apply that block a moment later
    at_height(tn, "hosp-b", json.loads(other2.stdout)["height"])
    listing = json.loads(radchain("research", "list", "--json", *target).stdout)
    by_code = {p["project"]: p for p in listing}
    assert [a["member"] for a in by_code["LUNG-1"]["approvals"]] == ["hosp-b"]
    assert by_code["OTHER-2"]["approvals"] == [] and by_code["LUNG-1"]["sponsor"] == "hosp-c"
    assert by_code["LUNG-1"]["ethics_digest"] == hashlib.sha256(ethics.read_bytes()).hexdigest()

    # the home hospital records the patient's consent; another member can neither revoke nor grant
    consent = {"type": "consent.granted", "patient_id": patient_id, "issuer": issuer, "grantee": "lung-lab-uni",
               "project": "LUNG-1", "scope": "IMG-CT", "purpose": "HRESCH", "actor": "privacy-office"}
    granted = rpc(tn, "hosp-b", "submit_event", {"event": consent, "mode": "commit", "timeout": 45})
    assert granted["outcome"] == "applied", granted
    # hosp-d refuses at admission only once its node applied the consent (hosp-b's home) acknowledged by hosp-b's
    at_height(tn, "hosp-d", granted["height"])
    for ev in ({**consent, "type": "consent.revoked"}, {**consent, "project": "OTHER-2"}):
        with pytest.raises(RuntimeError, match="home member 'hosp-b'"):
            rpc(tn, "hosp-d", "submit_event", {"event": ev})

    # export: consented, approved project -> de-identified files, lineage, manifest
    out = tmp_path / "export"
    pacs = f"http://127.0.0.1:{orthanc.http_port}"
    r = radchain("research", "export", *target, "--project", "LUNG-1", "--study", study, "--out", str(out),
                 "--pacs", pacs)
    exported = sorted(out.rglob("*.dcm"))
    assert len(exported) == 1, r.stdout
    ids, uids = originals(files[0])
    assert {patient_id, str(ct.PatientName)} <= ids and study in uids and len(uids) >= 3
    assert scan(exported[0], ids | uids) == []
    clean = pydicom.dcmread(exported[0])
    assert clean.PatientIdentityRemoved == "YES" and clean.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert clean.PixelData == ct.PixelData  # the image itself is untouched
    genesis = str(home["hosp-b"] / "genesis.json")
    ok = radchain("verify-export", str(out / "manifest.json"), "--genesis", genesis)
    assert "VALID" in ok.stdout and "consent" in ok.stdout
    manifest_text = (out / "manifest.json").read_text()
    assert patient_id not in manifest_text and study not in manifest_text

    # a tampered file, or a file slipped in, fails the offline check
    blob = bytearray(exported[0].read_bytes())
    blob[-1] ^= 1
    exported[0].write_bytes(bytes(blob))
    bad = radchain("verify-export", str(out / "manifest.json"), "--genesis", genesis, check=False)
    assert bad.returncode == 1 and "differs" in bad.stdout
    blob[-1] ^= 1
    exported[0].write_bytes(bytes(blob))
    (out / "extra.dcm").write_bytes(files[1].read_bytes())
    bad = radchain("verify-export", str(out / "manifest.json"), "--genesis", genesis, check=False)
    assert bad.returncode == 1 and "not in the manifest" in bad.stdout

    # a project hosp-b did not approve is refused
    r = radchain("research", "export", *target, "--project", "OTHER-2", "--study", study, "--out",
                 str(tmp_path / "other"), "--pacs", pacs, check=False)
    assert r.returncode == 1 and "has not approved OTHER-2" in r.stderr
    assert not (tmp_path / "other").exists()

    # revoked: hosp-b's node refuses the next export
    revoke = {k: v for k, v in consent.items() if k != "purpose"} | {"type": "consent.revoked"}
    assert rpc(tn, "hosp-b", "submit_event", {"event": revoke, "mode": "commit", "timeout": 45})["outcome"] == "applied"
    r = radchain("research", "export", *target, "--project", "LUNG-1", "--study", study, "--out",
                 str(tmp_path / "again"), "--pacs", pacs, check=False)
    assert r.returncode == 1 and "no consent in force" in r.stderr and "refused by the node" in r.stderr

    # forced: the same export, signed by hosp-b, sent to hosp-a, whose node skips its own check: it is
    # proposed and committed, and every validator rejects it with the reason
    from nacl.signing import SigningKey  # noqa: F401 (the member key type)

    from node.ledger.intake import event_to_tx_fields, sign_tx
    from node.ledger.pseudonym import Pseudonymizer, normalize
    from node.runtime.keys import load_member_key
    from node.runtime.settings import load_config
    from node.runtime.tokenizer import _Resolved, load_local_key

    cfg = load_config(home["hosp-b"])
    key = load_member_key(cfg.member_key_path)
    # The consortium tokens come from the threshold OPRF (issue 13): read hosp-b's own, already on chain.
    trail = rpc(tn, "hosp-b", "audit_trail", {"study_uid": study})["entries"]
    tokens = {("patient", normalize("patient", patient_id, issuer)): bytes.fromhex(trail[0]["patient"]),
              ("study", normalize("study", study)): bytes.fromhex(trail[0]["study"])}
    pseudonyms = _Resolved(Pseudonymizer(load_local_key(home["hosp-b"])), tokens)
    fields = event_to_tx_fields({"type": "export", "patient_id": patient_id, "issuer": issuer, "study_uid": study,
                                 "actor": "research-export", "purpose": "HRESCH", "project": "LUNG-1",
                                 "modality": "CT"},
                                pseudonyms, chain_id=json.loads(
                                    (home["hosp-b"] / "genesis.json").read_text())["chain_id"],
                                member="hosp-b", client=bytes(key.verify_key))
    raw = sign_tx(fields, key)
    with pytest.raises(RuntimeError, match="no consent in force"):
        rpc(tn, "hosp-b", "submit_tx", {"tx": raw.hex()})  # the honest node refuses it
    answer = rpc(tn, "hosp-a", "submit_tx", {"tx": raw.hex(), "mode": "commit", "timeout": 45})
    assert answer["status"] == "committed", (answer, rpc(tn, "hosp-b", "validators"))  # hosp-a must be primary
    h = answer["tx"]
    wait_for(lambda: tn.committed_everywhere([h]), 30, 0.2, "the forced tx in a block on every node")
    for n in tn.nodes:
        got = rpc(tn, n["name"], "get_tx", {"hash": h, "receipt": False})
        assert got["outcome"] == "rejected" and "no consent in force" in got["reason"], (n["name"], got)

    # the patient access report: hosp-b (the home hospital) names the patient, hosp-d uses the pseudonym
    report = tmp_path / "report-hosp-b.html"
    radchain("patient-report", *target, "--patient-id", patient_id, "--issuer", issuer, "--out", str(report))
    other = tmp_path / "report-hosp-d.html"
    radchain("patient-report", "--home", str(home["hosp-d"]), "--patient-id", patient_id, "--issuer", issuer,
             "--out", str(other))
    assert patient_id not in other.read_text() and str(ct.PatientName) not in other.read_text()
    assert patient_id in report.read_text()
    rows = render_rows(browser, report, tmp_path / "report-hosp-b.png")
    types = [t for t, _ in rows]
    # the store, the view, the consent, the export (and its lineage), the withdrawal, in that order; the
    # forced export was rejected by every validator and is not an event of the patient's record
    wanted = ["instances.stored", "instances.accessed", "consent.granted", "export", "deidentified",
              "consent.revoked"]
    assert [t for t in types if t in wanted] == wanted, types
    assert types.count("export") == 1
    texts = dict(rows)
    assert "hosp-b" in texts["export"] and "research project LUNG-1" in texts["export"]
    assert "healthcare research (HRESCH)" in texts["export"]
    assert "Consent withdrawn" in texts["consent.revoked"]


def render_rows(browser, html: Path, screenshot: Path) -> list[tuple[str, str]]:
    """The event rows as headless Chromium shows them: (tx type, visible text), top to bottom."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(120_000)
        page.goto(html.as_uri())
        assert page.locator("#patient").is_visible()
        rows = page.locator("#events tbody tr")
        out = []
        for i in range(rows.count()):
            row = rows.nth(i)
            assert row.is_visible()
            out.append((row.get_attribute("data-type"), row.inner_text()))
        page.screenshot(path=str(screenshot), full_page=True)
    finally:
        context.close()
    return out


def test_waiver_export_and_verify_export_against_a_hostile_manifest(world, tmp_path):
    """A project with a recorded consent waiver exports without a consent; then verify-export meets the
    manifests an attacker would write: a path out of the directory, a forged certificate, a lineage receipt
    swapped for another tx, another chain's genesis, malformed JSON. Each is INVALID (exit 1), never a
    traceback."""
    tn, orthanc, port, _root = world
    home = {n["name"]: Path(n["home"]) for n in tn.nodes}
    mr = pydicom.dcmread(sample_file("MR_small.dcm"))
    run_tool(["storescu", "-aet", "MR_RES", "-aec", "ORTHANC", "127.0.0.1", str(port), str(sample_file("MR_small.dcm"))])
    recorded(tn, str(mr.StudyInstanceUID), {"instances.stored"})  # delivered by the proxy in the background
    ethics = tmp_path / "waiver.pdf"
    ethics.write_bytes(b"%PDF ethics board: consent waived for retrospective MR study")
    radchain("research", "register", "--home", str(home["hosp-c"]), "--project", "RETRO-MR", "--ethics-doc",
             str(ethics), "--scope", "IMG-MR", "--expires", "2036-01-01", "--waiver")
    radchain("research", "approve", "RETRO-MR", "--home", str(home["hosp-b"]))
    out = tmp_path / "export"
    radchain("research", "export", "--home", str(home["hosp-b"]), "--project", "RETRO-MR", "--study",
             str(mr.StudyInstanceUID), "--out", str(out), "--pacs", f"http://127.0.0.1:{orthanc.http_port}")
    manifest = out / "manifest.json"
    genesis = str(home["hosp-b"] / "genesis.json")
    ok = radchain("verify-export", str(manifest), "--genesis", genesis)
    assert "consent waived by the project" in ok.stdout
    doc = json.loads(manifest.read_text())
    ids, uids = originals(sample_file("MR_small.dcm"))
    assert scan(next(out.rglob("*.dcm")), ids | uids) == []

    def verdict(mutate) -> str:
        bad = json.loads(json.dumps(doc))
        mutate(bad)
        manifest.write_text(json.dumps(bad))
        r = radchain("verify-export", str(manifest), "--genesis", genesis, check=False)
        assert r.returncode == 1 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
        return r.stdout

    f0 = lambda m: m["studies"][0]["files"][0]  # noqa: E731
    assert "outside the export directory" in verdict(lambda m: f0(m).update(path="../../etc/passwd"))
    cert = doc["studies"][0]["export"]["receipt"]["certificate"]
    assert "receipt invalid" in verdict(lambda m: m["studies"][0]["export"]["receipt"].update(
        certificate=cert[:-2] + ("00" if cert[-2:] != "00" else "01")))
    assert "not the one recorded" in verdict(lambda m: f0(m)["deidentified"].update(
        receipt=m["studies"][0]["export"]["receipt"]))
    assert "not the registration of RETRO-MR" in verdict(lambda m: m.update(
        project_registration=m["studies"][0]["export"]["receipt"]))
    assert "no receipt" in verdict(lambda m: m.update(project_approval=None))
    assert "receipt invalid" in verdict(lambda m: f0(m)["deidentified"]["receipt"].update(index=float("inf")))
    assert "not a radchain-research-export/1 manifest" in verdict(lambda m: m.update(format="x"))
    assert "must be a list of objects" in verdict(lambda m: m.update(studies="abc"))
    assert "original: no receipt" in verdict(lambda m: f0(m).pop("original"))
    assert "not recorded as stored" in verdict(lambda m: f0(m).update(original=f0(m)["deidentified"]))
    assert "without a path" in verdict(lambda m: f0(m).update(path=["a"]))
    manifest.write_text("[1, 2")
    r = radchain("verify-export", str(manifest), "--genesis", genesis, check=False)
    assert r.returncode == 1 and "not JSON" in r.stdout
    manifest.write_text(json.dumps(doc))
    other = tmp_path / "other-genesis.json"
    g = json.loads(Path(genesis).read_text())
    other.write_text(json.dumps({**g, "chain_id": "another-consortium"}))
    r = radchain("verify-export", str(manifest), "--genesis", str(other), check=False)
    assert r.returncode == 1 and "another-consortium" in r.stdout
    assert radchain("verify-export", str(manifest), "--genesis", genesis).returncode == 0
