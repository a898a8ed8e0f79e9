"""`radchain research export`: fetch a study from the PACS, record the export (gated by every validator),
de-identify each instance, record its lineage, and write the files with a manifest; and the manifest's
offline check (`radchain verify-export`).

Order, so that nothing leaves the hospital unrecorded or refused:
1. the study's instances are read from the PACS (Orthanc REST; every response bounded before it is held);
2. one ``export`` tx (purpose, project, the study's modality / body part / date) is submitted in commit mode:
   a refusal at admission or a rejection at execution stops here, and no file is written;
3. each instance is de-identified (node.research.deid); a file that cannot be cleaned safely stops the export;
4. one ``deidentified`` tx per instance (source_digest = the original's canonical digest, as the DICOM hook
   recorded it at store time; derived_digest = the de-identified file's), committed;
5. the files and ``manifest.json`` (digests, receipts of the export, lineage, project and consent txs) are
   written. The manifest holds tokens and digests only, never an original identifier.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from node.dicom.rawdicom import DicomFormatError, inspect_file
from node.research.deid import PROFILE, Deidentifier, DeidError
from node.vocabulary import (
    ANY_PROJECT,
    CategoryError,
    code_string,
    is_research,
    purpose_covers,
    scope_covers,
    study_date,
)

__all__ = ["ExportError", "Pacs", "export_studies", "verify_manifest", "MANIFEST_FORMAT"]

MANIFEST_FORMAT = "radchain-research-export/1"
MAX_INSTANCES = 5000          # per study
MAX_FILE_BYTES = 512 << 20    # per instance file
MAX_JSON_BYTES = 16 << 20     # a PACS JSON answer
MAX_MANIFEST_BYTES = 64 << 20


class ExportError(RuntimeError):
    """The export was refused or could not be done; nothing was written (the message says why)."""


class Pacs:
    """Orthanc's REST API, with every answer read under a size cap (a PACS is an input like any other)."""

    def __init__(self, url: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self._http = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str, cap: int, method: str = "GET", body: dict | None = None) -> bytes:
        with self._http.stream(method, self.url + path, json=body) as r:
            if r.status_code != 200:
                raise ExportError(f"PACS {method} {path}: HTTP {r.status_code}")
            chunks, size = [], 0
            for chunk in r.iter_bytes():
                size += len(chunk)
                if size > cap:
                    raise ExportError(f"PACS {path}: answer over {cap} bytes")
                chunks.append(chunk)
        return b"".join(chunks)

    def _json(self, path: str, method: str = "GET", body: dict | None = None):
        try:
            return json.loads(self._get(path, MAX_JSON_BYTES, method, body))
        except ValueError:
            raise ExportError(f"PACS {path}: not JSON") from None

    def study_files(self, study_uid: str) -> list[bytes]:
        ids = self._json("/tools/find", "POST", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
        if not isinstance(ids, list) or len(ids) != 1 or not isinstance(ids[0], str):
            raise ExportError(f"study {study_uid}: not found in the PACS" if not ids else
                              f"study {study_uid}: the PACS answered {len(ids)} matches")
        instances = self._json(f"/studies/{ids[0]}/instances")
        if not isinstance(instances, list) or len(instances) > MAX_INSTANCES:
            raise ExportError(f"study {study_uid}: more than {MAX_INSTANCES} instances or a malformed list")
        out = []
        for inst in instances:
            iid = inst.get("ID") if isinstance(inst, dict) else None
            if not isinstance(iid, str) or not iid.replace("-", "").isalnum():
                raise ExportError(f"study {study_uid}: malformed instance id from the PACS")
            out.append(self._get(f"/instances/{iid}/file", MAX_FILE_BYTES))
        return out


@dataclass
class _Study:
    uid: str
    originals: list[tuple[bytes, object]] = field(default_factory=list)  # (file bytes, InstanceInfo)


def _receipt(rc, tx_hash: str) -> dict:
    ans = rc.get_tx(tx_hash, receipt=True)
    if ans.get("status") != "committed" or "receipt" not in ans:
        raise ExportError(f"tx {tx_hash}: not committed ({ans.get('status')})")
    return ans["receipt"]


def _committed(rc, answer, what: str) -> str:
    """The tx hash of an applied commit-mode answer; ExportError with the node's reason otherwise."""
    from node.client import RpcCallError

    if isinstance(answer, RpcCallError):
        raise ExportError(f"{what} refused by the node: {answer}")
    if answer.get("status") == "pending" and answer.get("tx"):  # admitted, not yet committed: wait for it
        answer = {**rc.wait_committed(answer["tx"], timeout=120), "tx": answer["tx"]}
    if answer.get("status") != "committed":
        raise ExportError(f"{what}: not committed in time ({answer.get('status')}); nothing was written")
    if answer.get("outcome") != "applied":
        raise ExportError(f"{what} rejected by the validators: {answer.get('reason', answer.get('outcome'))}")
    return answer["tx"]


def _submit(rc, event: dict):
    from node.client import RpcCallError

    try:
        return rc.submit_event(event, mode="commit", timeout=30)
    except RpcCallError as exc:
        return exc


STORE_TYPES = ("instances.stored", "instances.transferred", "import")


def _recorded_originals(rc, study_uid: str) -> dict[str, str]:
    """canonical digest -> hash of the first applied tx that recorded storing it, for one study."""
    found: dict[str, str] = {}
    for e in rc.audit_trail_all(study_uid=study_uid, limit=1000):
        if e["type"] in STORE_TYPES and not e.get("outcome") and e.get("digest"):
            found.setdefault(e["digest"], e["hash"])
    return found


def _categories(info) -> dict:
    out = {}
    for name, key in (("modality", "Modality"), ("body_part", "BodyPartExamined")):
        value = info.get(key)
        if value:
            try:
                out[name] = code_string(value, name)
            except CategoryError:
                pass
    if info.get("StudyDate"):
        try:
            out["study_date"] = study_date(info.get("StudyDate"))
        except CategoryError:
            pass
    return out


def _consent_receipt(rc, patient_id: str, issuer: str, project: dict, purpose: str, modality) -> dict | None:
    """The receipt of the newest consent grant covering this export, for the manifest (None: none found)."""
    found = None
    for tx_type in ("consent.granted", "research.access.granted"):
        page = rc.audit_trail(patient_id=patient_id, issuer=issuer, type=tx_type, limit=1000)
        for e in page["entries"]:
            if ((e.get("project") or e.get("grantee")) in (project["project"], ANY_PROJECT)
                    and scope_covers(e["scope"], modality)
                    and purpose_covers(e["purpose"], purpose)):
                if found is None or (e["height"], e["index"]) > (found["height"], found["index"]):
                    found = e
    return None if found is None else _receipt(rc, found["hash"])


def export_studies(rc, pacs: Pacs, home: Path, project_code: str, study_uids: list[str], out_dir: Path, *,
                   actor: str, default_issuer: str, purpose: str | None = None) -> dict:
    """Export ``study_uids`` under ``project_code`` to ``out_dir``; returns the manifest (also written)."""
    from node.ledger.genesis import Genesis
    from node.research.projects import get_project, project_key
    from node.runtime.settings import load_config

    cfg = load_config(home)
    genesis = Genesis.load(cfg.genesis_path)
    project = get_project(rc, project_code)
    if project is None:
        raise ExportError(f"project {project_code} is not registered on the chain")
    purpose = purpose or project["purpose"]
    if not is_research(purpose):
        raise ExportError(f"purpose {purpose} is not a research purpose")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir} is not empty")
    deid = Deidentifier(project_code, project_key(home, project_code))

    studies = []
    for uid in study_uids:
        st = _Study(uid)
        for blob in pacs.study_files(uid):
            try:
                st.originals.append((blob, inspect_file(blob)))
            except DicomFormatError as exc:
                raise ExportError(f"study {uid}: a PACS file is not DICOM ({exc})") from None
        if not st.originals:
            raise ExportError(f"study {uid}: no instances")
        studies.append(st)

    manifest_studies, written = [], []
    for st in studies:
        first = st.originals[0][1]
        patient_id, issuer = first.get("PatientID"), first.get("IssuerOfPatientID") or default_issuer
        if not patient_id or any(i.get("PatientID") != patient_id for _, i in st.originals):
            raise ExportError(f"study {st.uid}: instances without one Patient ID")
        cats = _categories(first)
        recorded = _recorded_originals(rc, st.uid)
        missing = [i.get("SOPInstanceUID") for _, i in st.originals if i.digest not in recorded]
        if missing:
            raise ExportError(f"study {st.uid}: {len(missing)} instance(s) were never recorded as stored on the "
                              f"chain (lineage needs a recorded original); nothing was exported")
        base = {"patient_id": patient_id, "issuer": issuer, "study_uid": st.uid, "actor": actor,
                "purpose": purpose, "project": project_code}
        export_tx = _committed(rc, _submit(rc, {"type": "export", **base, **cats, "n_instances": len(st.originals)}),
                               f"export of study {st.uid}")
        cleaned = []
        for blob, info in st.originals:
            try:
                out = deid.deidentify(blob, issuer)
            except DeidError as exc:
                raise ExportError(f"study {st.uid}: instance refused by de-identification: {exc}") from None
            derived = inspect_file(out)
            cleaned.append((out, info, derived))
        events = [{"type": "deidentified", **base, "source_digest": info.digest, "derived_digest": derived.digest,
                   "sop_instance_uids": [info.get("SOPInstanceUID")]} | _categories(info)
                  for _, info, derived in cleaned]
        answers = rc.submit_events(events, mode="commit")
        lineage = [_committed(rc, a, "lineage record (deidentified)") for a in answers]
        files = []
        for (out, info, derived), tx in zip(cleaned, lineage, strict=True):
            rel = Path(deid.uid(st.uid)) / f"{derived.get('SOPInstanceUID')}.dcm"
            files.append({"path": str(rel), "sha256": hashlib.sha256(out).hexdigest(), "digest": derived.digest,
                          "deidentified": {"tx": tx, "receipt": _receipt(rc, tx)},
                          "original": {"tx": recorded[info.digest], "receipt": _receipt(rc, recorded[info.digest])}})
            written.append((rel, out))
        consent = None if project.get("waiver") else _consent_receipt(
            rc, patient_id, issuer, project, purpose, cats.get("modality"))
        manifest_studies.append({"study": deid.uid(st.uid), "export": {"tx": export_tx, "receipt": _receipt(rc, export_tx)},
                                 "consent": consent, "files": files})

    approval = next((a for a in get_project(rc, project_code)["approvals"] if a["member"] == cfg.name), None)
    manifest = {
        "format": MANIFEST_FORMAT, "chain_id": genesis.chain_id, "genesis_hash": genesis.hash().hex(),
        "project": project_code, "exporter": cfg.name, "purpose": purpose,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "deidentification": {**PROFILE, "library": f"dicom-anonymizer {deid.library_version}"},
        "project_registration": _receipt(rc, project["tx"]),
        "project_approval": _receipt(rc, approval["tx"]) if approval else None,
        "studies": manifest_studies,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for rel, data in written:
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / rel).write_bytes(data)
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


# ---------------------------------------------------------------------------------------------- verify

def _check_receipt(doc, genesis, what: str):
    from node.ledger.verifier import Receipt, ReceiptError, verify_receipt

    if not isinstance(doc, dict):
        raise ExportError(f"{what}: no receipt")
    try:
        receipt = Receipt(bytes.fromhex(doc["tx"]), int(doc["index"]), tuple(bytes.fromhex(p) for p in doc["path"]),
                          bytes.fromhex(doc["proposal_header"]), bytes.fromhex(doc["certificate"]))
        tx, header = verify_receipt(receipt, genesis.member_pubkeys, genesis.chain_id)
    except (KeyError, TypeError, ValueError, OverflowError, ReceiptError) as exc:
        raise ExportError(f"{what}: receipt invalid ({exc})") from None
    return tx.fields, header, tx.hash.hex()


def _at(doc, *path):
    """doc[path[0]][path[1]]... for a manifest an attacker may have written: None where it is not a map."""
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def _items(doc, key: str) -> list[dict]:
    value = _at(doc, key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ExportError(f"manifest: {key} must be a list of objects")
    return value


def verify_manifest(manifest_path: Path, genesis) -> list[str]:
    """Check an export directory offline against the consortium's genesis; the list of what was checked.
    Raises ExportError at the first problem."""
    manifest_path = Path(manifest_path)
    if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ExportError("manifest: over 64 MiB")
    try:
        m = json.loads(manifest_path.read_bytes())
    except ValueError:
        raise ExportError("manifest: not JSON") from None
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
        raise ExportError(f"manifest: not a {MANIFEST_FORMAT} manifest")
    if m.get("chain_id") != genesis.chain_id:
        raise ExportError(f"manifest: for chain {m.get('chain_id')!r}, this genesis is {genesis.chain_id!r}")
    code, exporter = m.get("project"), m.get("exporter")
    root = manifest_path.parent
    notes = []

    reg, reg_hdr, _ = _check_receipt(m.get("project_registration"), genesis, "project registration")
    if reg["type"] != "research.project.registered" or reg["project"] != code:
        raise ExportError(f"project registration: the receipt is not the registration of {code}")
    app, app_hdr, _ = _check_receipt(m.get("project_approval"), genesis, "project approval")
    if app["type"] != "research.project.approved" or app["project"] != code or app["member"] != exporter:
        raise ExportError(f"project approval: the receipt is not {exporter}'s approval of {code}")
    notes.append(f"project {code} registered by {reg['member']} at height {reg_hdr.height} "
                 f"(ethics approval digest {reg['digest'].hex()[:16]}...), approved by {exporter} at height "
                 f"{app_hdr.height}")

    listed: set[str] = set()
    n_files = 0
    for st in _items(m, "studies"):
        ex, ex_hdr, ex_hash = _check_receipt(_at(st, "export", "receipt"), genesis, "export")
        if ex["type"] != "export" or ex.get("project") != code or ex["member"] != exporter:
            raise ExportError("export: the receipt is not an export under this project by the exporter")
        if not is_research(ex.get("purpose")) or not purpose_covers(reg["purpose"], ex["purpose"]):
            raise ExportError(f"export: purpose {ex.get('purpose')} is outside the project's {reg['purpose']}")
        if not (reg_hdr.height <= ex_hdr.height and app_hdr.height <= ex_hdr.height):
            raise ExportError("export: recorded before the project's registration or approval")
        if reg["expires"] <= ex_hdr.timestamp:
            raise ExportError("export: recorded after the project expired")
        if reg.get("waiver"):
            notes.append(f"study export {ex_hash[:16]}... at height {ex_hdr.height}: consent waived by the project")
        else:
            c, c_hdr, c_hash = _check_receipt(st.get("consent"), genesis, "consent")
            if (c["type"] not in ("consent.granted", "research.access.granted") or c["patient"] != ex["patient"]
                    or (c.get("project") or c["grantee"]) not in (code, ANY_PROJECT)
                    or not scope_covers(c["scope"], ex.get("modality"))
                    or not purpose_covers(c["purpose"], ex["purpose"])):
                raise ExportError("consent: the receipt is not a consent of this patient covering the export")
            if c_hdr.height > ex_hdr.height or (c.get("expires", 0) and c["expires"] <= ex_hdr.timestamp):
                raise ExportError("consent: granted after the export, or expired before it")
            notes.append(f"study export {ex_hash[:16]}... at height {ex_hdr.height}: consent {c_hash[:16]}... "
                         f"({c['scope']}, {c['purpose']}) granted by the patient's home member {c['member']} at "
                         f"height {c_hdr.height}")
        for f in _items(st, "files"):
            rel = f.get("path")
            if not isinstance(rel, str) or not rel:
                raise ExportError("manifest: a file entry without a path")
            path = (root / rel).resolve()
            if root.resolve() not in path.parents:
                raise ExportError(f"{rel}: outside the export directory")
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ExportError(f"{rel}: missing ({exc.strerror})") from None
            if hashlib.sha256(data).hexdigest() != f.get("sha256"):
                raise ExportError(f"{rel}: the file differs from the exported one (SHA-256)")
            try:
                digest = inspect_file(data).digest
            except DicomFormatError as exc:
                raise ExportError(f"{rel}: not DICOM ({exc})") from None
            d, d_hdr, _ = _check_receipt(_at(f, "deidentified", "receipt"), genesis, f"{rel} lineage")
            if d["type"] != "deidentified" or d["derived_digest"].hex() != digest:
                raise ExportError(f"{rel}: the file is not the one recorded by its lineage tx")
            if d.get("project") != code or d["patient"] != ex["patient"] or d["study"] != ex["study"] \
                    or d["member"] != exporter or d_hdr.height < ex_hdr.height:
                raise ExportError(f"{rel}: its lineage tx is not part of this export")
            o, o_hdr, _ = _check_receipt(_at(f, "original", "receipt"), genesis, f"{rel} original")
            if (o["type"] not in STORE_TYPES or o.get("digest") != d["source_digest"] or o["patient"] != ex["patient"]
                    or o.get("study") != ex["study"] or o_hdr.height > d_hdr.height or o.get("outcome")):
                raise ExportError(f"{rel}: the original named by its lineage was not recorded as stored")
            listed.add(str(path))
            n_files += 1
    extra = [p for p in root.rglob("*") if p.is_file() and p.resolve() != manifest_path.resolve()
             and str(p.resolve()) not in listed]
    if extra:
        raise ExportError(f"{extra[0].relative_to(root)}: a file in the export directory is not in the manifest")
    if not n_files:
        raise ExportError("manifest: no files")
    notes.append(f"{n_files} files: each is the de-identified file recorded on chain, derived from an original "
                 f"recorded as stored (same patient and study), under project {code}")
    return notes
