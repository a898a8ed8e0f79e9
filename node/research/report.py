"""The patient access report: every recorded event for one patient's images, across the consortium, as a
self-contained HTML page a privacy officer can read without knowing what a blockchain is.

The events come from the chain through the hospital's own node (``audit_trail`` with the raw patient id and
issuer, tokenized by that node). The raw identifiers are printed only when the node producing the report
is the patient's home member (the member that recorded the patient's first consent, node.ledger.research):
every other member's report names the patient by pseudonym only. The chain itself never holds them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

__all__ = ["collect", "render", "EVENT_WORDS", "PURPOSE_WORDS"]

MAX_EVENTS = 100_000  # a report lists at most this many events (it says so if it stops there)

# tx type -> (what happened, in plain words; the kind of event)
EVENT_WORDS = {
    "instances.stored": ("Images stored in a hospital's archive", "access"),
    "instances.accessed": ("Images viewed or retrieved", "access"),
    "query": ("The patient's image records were searched", "access"),
    "transfer.begin": ("Images sent to another system", "access"),
    "instances.transferred": ("Images received from another system", "access"),
    "export": ("Images exported (copied out of the hospital)", "export"),
    "import": ("Images imported from media", "access"),
    "study.deleted": ("A study was deleted", "access"),
    "deidentified": ("A de-identified copy was made (names and identifiers removed)", "export"),
    "consent.granted": ("Consent given", "consent"),
    "consent.revoked": ("Consent withdrawn", "consent"),
    "research.access.granted": ("Research access granted", "consent"),
    "consent.vote": ("Consent change voted by a member (needs a majority of hospitals)", "consent"),
}
# HL7 v3 PurposeOfUse codes a report is likely to show, in words
PURPOSE_WORDS = {
    "TREAT": "treatment", "ETREAT": "emergency treatment", "BTG": "break-the-glass emergency access",
    "HRESCH": "healthcare research", "CLINTRCH": "clinical trial research", "BIORCH": "biomedical research",
    "DSRCH": "disease-specific research", "POARCH": "public and population health research",
    "PRECLINTRCH": "preclinical research", "TRANSRCH": "translational research",
    "CLINTRCHNPC": "clinical trial research (not patient care)", "CLINTRCHPC": "clinical trial research (patient care)",
    "HPAYMT": "payment", "HOPERAT": "healthcare operations", "PATRQT": "the patient's own request",
    "PUBHLTH": "public health", "HQUALIMP": "quality improvement", "HSYSADMIN": "system administration",
    "COC": "continuity of care", "TRAIN": "training",
}
SCOPE_WORDS = {"ALL": "the whole record", "IMG": "all imaging", "RPT": "imaging reports"}
_ROLE = {"instances.stored": "sender (modality or system)", "instances.accessed": "viewer / requesting system",
         "query": "searching system", "transfer.begin": "sending system", "instances.transferred": "receiving system",
         "export": "exporting staff", "deidentified": "exporting staff", "import": "importing staff",
         "study.deleted": "deleting system"}


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _scope(scope: str | None) -> str:
    if not scope:
        return ""
    if scope.startswith("IMG-"):
        return f"imaging: {scope[4:]} only"
    return SCOPE_WORDS.get(scope, scope)


def _row(e: dict) -> dict:
    t = e["type"]
    words, kind = EVENT_WORDS.get(t, (t, "other"))
    purpose = e.get("purpose")
    who = []
    if e.get("ae"):
        who.append(f"system {e['ae']}")
    if e.get("user"):
        who.append(f"staff member (pseudonym {e['user'][:8]})")
    details = []
    if t in ("consent.granted", "consent.revoked", "research.access.granted", "consent.vote"):
        grantee = e.get("project") or e.get("grantee", "")
        details.append(f"for {'any approved research project' if grantee == 'ANY-APPROVED-PROJECT' else grantee}")
        if e.get("scope"):
            details.append(f"covering {_scope(e['scope'])}")
        if e.get("expires"):
            details.append(f"until {_when(e['expires'])[:10]}")
        if t == "consent.vote":
            details.append("to grant" if e.get("action") == "C" else "to withdraw")
    if e.get("project") and kind != "consent":
        details.append(f"research project {e['project']}")
    if e.get("modality"):
        details.append(f"modality {e['modality']}")
    if e.get("n_instances"):
        n = e["n_instances"]
        details.append(f"{n} image{'' if n == 1 else 's'}")
    if e.get("study"):
        details.append(f"study (pseudonym {e['study'][:8]})")
    if e.get("outcome"):
        details.append("the attempt failed" if e["outcome"] >= 8 else "partly failed")
    return {"time": _when(e["ts"]), "ts": e["ts"], "hospital": e["member"], "what": words, "kind": kind,
            "type": t, "purpose": f"{PURPOSE_WORDS.get(purpose, purpose)} ({purpose})" if purpose else "",
            "role": _ROLE.get(t, "hospital (privacy office)" if kind == "consent" else ""),
            "who": ", ".join(who), "details": "; ".join(details), "tx": e["hash"], "height": e["height"]}


def collect(rc, patient_id: str, issuer: str) -> dict:
    """The report's data from a node's RPC: rows (oldest first), the home member, this node's name."""
    status = rc.status()
    entries, truncated = [], False
    for e in rc.audit_trail_all(patient_id=patient_id, issuer=issuer, limit=1000):
        entries.append(e)
        if len(entries) >= MAX_EVENTS:
            truncated = True
            break
    entries.sort(key=lambda e: (e["ts"], e["height"], e["index"]))
    consent_txs = sorted((e for e in entries if e["type"] in ("consent.granted", "consent.revoked",
                                                              "research.access.granted")),
                         key=lambda e: (e["height"], e["index"]))
    home = consent_txs[0]["member"] if consent_txs else None
    node = status.get("node")
    token = entries[0]["patient"] if entries else None
    return {"rows": [_row(e) for e in entries], "home": home, "node": node, "chain_id": status.get("chain_id"),
            "height": status.get("height"), "patient_token": token, "truncated": truncated,
            "identified": home is not None and home == node, "patient_id": patient_id, "issuer": issuer}


def render(data: dict, out: Path) -> Path:
    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                      autoescape=select_autoescape(["html"]))
    rows = data["rows"]
    counts = {k: sum(1 for r in rows if r["kind"] == k) for k in ("access", "export", "consent")}
    hospitals = sorted({r["hospital"] for r in rows})
    html = env.get_template("patient_report.html").render(
        **data, counts=counts, hospitals=hospitals,
        generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        patient_label=(f"{data['patient_id']} (issuer {data['issuer']})" if data["identified"]
                       else f"pseudonym {data['patient_token'] or 'unknown'}"),
        consents=[r for r in rows if r["kind"] == "consent"])
    out = Path(out)
    out.write_text(html, encoding="utf-8")
    return out
