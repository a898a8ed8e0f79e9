"""Research projects as the chain records them, read and written through a node's RPC (client side).

Listing uses ``audit_trail`` by tx type: only applied txs are indexed, so a project listed here is one every
validator accepted. Registration and approval are txs signed with the member key of a node home (the
hospital's own key: a project is a decision of the member, not of an integrator token).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from node.vocabulary import check_project_code

__all__ = ["list_projects", "get_project", "register_tx", "approve_tx", "project_key"]

_MAX_PAGES = 100


def _all(rc, tx_type: str, **filters) -> list[dict]:
    out, cursor = [], None
    for _ in range(_MAX_PAGES):
        params = {"type": tx_type, "limit": 1000, **filters}
        if cursor:
            params["cursor"] = cursor
        page = rc.audit_trail(**params)
        out.extend(page["entries"])
        cursor = page.get("next_cursor")
        if not cursor:
            break
    return out


def list_projects(rc, now_ms: int | None = None) -> list[dict]:
    """Every registered project with its approvals (member names), oldest first."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    approvals: dict[str, list[dict]] = {}
    for e in _all(rc, "research.project.approved"):
        approvals.setdefault(e["project"], []).append({"member": e["member"], "tx": e["hash"], "ts": e["ts"]})
    projects = []
    for e in _all(rc, "research.project.registered"):
        p = {k: e[k] for k in ("project", "purpose", "scope", "expires", "modality", "body_part", "date_from",
                               "date_to", "waiver") if k in e}
        p.update(sponsor=e["member"], ethics_digest=e["digest"], tx=e["hash"], height=e["height"],
                 registered=e["ts"], approvals=approvals.get(e["project"], []),
                 status="expired" if e["expires"] <= now else "active")
        p.setdefault("waiver", 0)
        projects.append(p)
    return projects


def get_project(rc, code: str) -> dict | None:
    return next((p for p in list_projects(rc) if p["project"] == code), None)


def _member_key(home: Path):
    from node.runtime.keys import load_member_key
    from node.runtime.settings import load_config

    cfg = load_config(home)
    return cfg, load_member_key(cfg.member_key_path)


def _chain_id(home: Path) -> str:
    from node.ledger.genesis import Genesis

    return Genesis.load(Path(home) / "genesis.json").chain_id


def register_tx(home: Path, code: str, ethics_digest: bytes, purpose: str, scope: str, expires_ms: int,
                **scope_fields) -> bytes:
    """research.project.registered signed with the member key of ``home`` (the sponsor)."""
    from node.ledger.intake import make_tx

    cfg, key = _member_key(home)
    fields = {k: v for k, v in scope_fields.items() if v is not None}
    return make_tx("research.project.registered", key, chain_id=_chain_id(home), member=cfg.name,
                   project=check_project_code(code), digest=ethics_digest, purpose=purpose, scope=scope,
                   expires=expires_ms, **fields)


def approve_tx(home: Path, code: str) -> bytes:
    from node.ledger.intake import make_tx

    cfg, key = _member_key(home)
    return make_tx("research.project.approved", key, chain_id=_chain_id(home), member=cfg.name,
                   project=check_project_code(code))


def project_key(home: Path, code: str, create: bool = True) -> bytes:
    """The exporting hospital's secret key for ``code``'s UID replacements (HOME/keys/research/CODE.key)."""
    from node.privatefiles import write_secret

    path = Path(home) / "keys" / "research" / f"{check_project_code(code)}.key"
    if path.exists():
        return path.read_bytes()
    if not create:
        raise FileNotFoundError(path)
    try:
        write_secret(path, os.urandom(32), exclusive=True)
    except FileExistsError:
        pass  # another export created it meanwhile: use that one
    return path.read_bytes()
